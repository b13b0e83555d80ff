"""What a snapshot is, as data: the canonical core (which its id hashes) and the manifest around it.

The id is the sha256 of the core's canonical JSON: the format version, the chunk size, the
schema, the row count and the ordered chunk digests. Nothing about where the data came from
(file name, snapshot name, time) is in it, so identical data gives the identical id.
The manifest adds what is derived from the data (per-column statistics) and is stored as a
blob itself; the SQLite catalog indexes it.
"""

from __future__ import annotations

import hashlib

import msgspec

FORMAT = "loopserve.snapshot/1"


class Column(msgspec.Struct, frozen=True):
    name: str
    type: str  # the Arrow type as Arrow prints it: "int64", "double", "string", "timestamp[us, tz=UTC]"


class Chunk(msgspec.Struct, frozen=True):
    digest: str  # sha256 of the chunk's canonical Arrow IPC stream bytes
    rows: int
    bytes: int


class SnapshotCore(msgspec.Struct, frozen=True):
    """Everything the id depends on; field order is fixed, so the encoding is canonical."""

    format: str
    chunk_rows: int
    schema_digest: str  # blob: the Arrow schema, serialized (exact types, also for 0 rows)
    columns: list[Column]
    rows: int
    chunks: list[Chunk]

    def snapshot_id(self) -> str:
        return hashlib.sha256(msgspec.json.encode(self)).hexdigest()


class ColumnStats(msgspec.Struct, omit_defaults=True):
    """Statistics of one column over the whole snapshot.

    Numeric (integers, floats, booleans as 0/1): min, max, mean, std (population) over the
    values that are neither null nor NaN. Strings and categoricals: the number of distinct
    values and the most frequent ones, when there are at most `stats.MAX_TRACKED_VALUES`
    distinct values (else `distinct` is None: too many to count exactly).
    """

    name: str
    kind: str  # "numeric", "categorical" or "other"
    count: int  # non-null values (NaN included)
    nulls: int
    nans: int = 0
    min: int | float | None = None
    max: int | float | None = None
    mean: float | None = None
    std: float | None = None
    distinct: int | None = None
    top: list[tuple[str, int]] = []  # (value, count), most frequent first
    categories: list[str] | None = None  # every distinct value, sorted, when few enough


class Manifest(msgspec.Struct):
    id: str
    core: SnapshotCore
    stats: list[ColumnStats]
    chunk_stats: str  # blob: per chunk, its mergeable partial statistics (what an append builds on)

    @property
    def rows(self) -> int:
        return self.core.rows

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.core.chunks)

    def column_stats(self, name: str) -> ColumnStats | None:
        return next((s for s in self.stats if s.name == name), None)


class SnapshotInfo(msgspec.Struct):
    """What `snapshot()` returns and `list_snapshots()` lists."""

    id: str
    rows: int
    bytes: int
    chunks: int
    chunks_reused: int  # chunks already in the store (0 when listed)
    name: str | None
    parent: str | None
    created_at: float
    manifest_digest: str

    @property
    def short_id(self) -> str:
        return self.id[:12]


def encode(obj) -> bytes:
    return msgspec.json.encode(obj)


def decode_manifest(data: bytes) -> Manifest:
    return msgspec.json.decode(data, type=Manifest)
