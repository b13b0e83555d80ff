"""Taking, appending to and loading snapshots.

Writing streams the input: batches are regrouped into canonical chunks (see chunks.py), and a
small thread pool serializes, hashes, writes and profiles chunks while the next ones are read
(Arrow and hashlib release the GIL), with a bounded number in flight so memory stays at a few
chunks beyond the reader's own. Blobs go first and the catalog row last, so a crash part way
leaves only unreferenced blobs, never a snapshot with missing chunks.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

import msgspec
import numpy as np
import pyarrow as pa

from loopserve.data import catalog
from loopserve.data import chunks as ck
from loopserve.data import stats as st
from loopserve.data.errors import SnapshotCorrupt, SnapshotError
from loopserve.data.manifest import FORMAT, Chunk, Column, Manifest, SnapshotCore, SnapshotInfo, decode_manifest, encode
from loopserve.data.sources import open_source
from loopserve.errors import LoopserveError
from loopserve.store import IntegrityError, Store, open_store, validate_name

WORKERS = max(2, min(4, os.cpu_count() or 2))
IN_FLIGHT = 2 * WORKERS  # chunks being written at once: bounds the memory beyond the input's


class _Written(msgspec.Struct):
    chunk: Chunk
    reused: bool
    partials: list[st.Partial]


def _write_chunk(store: Store, table: pa.Table, schema: pa.Schema) -> _Written:
    batch = ck.canonical_batch(table, schema)
    data = ck.serialize(batch)
    digest = ck.sha256(data)
    reused = store.blobs.exists(digest)
    if not reused:
        store.blobs.put_bytes(memoryview(data))
    return _Written(Chunk(digest, batch.num_rows, data.size), reused, st.table_partials(batch))


def _write_chunks(store: Store, batches: Iterable[pa.RecordBatch], schema: pa.Schema,
                  first_offset: int) -> list[_Written]:
    out: list[_Written] = []
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="snapshot") as pool:
        pending: deque = deque()
        for table in ck.rechunk(batches, first_offset=first_offset):
            pending.append(pool.submit(_write_chunk, store, table, schema))
            if len(pending) >= IN_FLIGHT:
                out.append(pending.popleft().result())
        out.extend(f.result() for f in pending)
    return out


def _commit(store: Store, schema: pa.Schema, written: list[_Written], name: str | None,
            parent: str | None) -> SnapshotInfo:
    schema_digest = store.blobs.put_bytes(ck.serialize_schema(schema))
    core = SnapshotCore(format=FORMAT, chunk_rows=ck.CHUNK_ROWS, schema_digest=schema_digest,
                        columns=[Column(f.name, str(f.type)) for f in schema],
                        rows=sum(w.chunk.rows for w in written), chunks=[w.chunk for w in written])
    snapshot_id = core.snapshot_id()
    per_chunk = [w.partials for w in written]
    merged = [st.merge_all([p[i] for p in per_chunk]) if per_chunk else st.empty(f.type)
              for i, f in enumerate(schema)]
    manifest = Manifest(id=snapshot_id, core=core,
                        stats=[st.finish(f.name, p) for f, p in zip(schema, merged)],
                        chunk_stats=store.blobs.put_bytes(encode(per_chunk)))
    manifest_digest = store.blobs.put_bytes(encode(manifest))
    created_at, name, parent = catalog.record(store.db, snapshot_id, name=name, parent=parent, rows=core.rows,
                                              nbytes=manifest.bytes, chunks=len(core.chunks),
                                              manifest_digest=manifest_digest)
    return SnapshotInfo(id=snapshot_id, rows=core.rows, bytes=manifest.bytes, chunks=len(core.chunks),
                        chunks_reused=sum(w.reused for w in written), name=name, parent=parent,
                        created_at=created_at, manifest_digest=manifest_digest)


def snapshot(data, store: Store | str | os.PathLike | None = None, name: str | None = None,
             parent: str | None = None) -> SnapshotInfo:
    """Snapshot `data`: a path to a CSV, Parquet or .npz file, a pyarrow Table, or a dict of
    numpy arrays. Identical data gives the identical id; chunks already in the store (say, the
    first rows of a grown file) are shared, not written again (`chunks_reused`)."""
    if name is not None:
        validate_name("snapshot", name)
    with open_store(store) as s:
        if parent is not None:
            parent = catalog.resolve(s.db, parent).id
        src = open_source(data)
        try:
            try:
                schema = ck.canonical_schema(src.schema)
                written = _write_chunks(s, src.batches, schema, 0)
            except pa.ArrowInvalid:
                if src.fallback is None:
                    raise
                src = src.fallback()  # chunks written so far stay as unreferenced blobs
                schema = ck.canonical_schema(src.schema)
                written = _write_chunks(s, src.batches, schema, 0)
        except (pa.ArrowException, OSError) as e:
            if isinstance(e, LoopserveError):
                raise
            raise SnapshotError(f"cannot snapshot {src.description}: {e}") from e
        return _commit(s, schema, written, name, parent)


def snapshot_append(base: str, new_rows, store: Store | str | os.PathLike | None = None,
                    name: str | None = None) -> SnapshotInfo:
    """A new snapshot: the rows of `base` followed by `new_rows` (anything `snapshot` takes,
    with the same column names, in the same order, of types that cast safely to the base's).
    The base's full chunks are reused as they are, without being read; only its last,
    partial chunk is read and written again together with the new rows."""
    if name is not None:
        validate_name("snapshot", name)
    with open_store(store) as s:
        manifest = read_manifest(base, s)
        schema = _read_schema(s, manifest)
        src = open_source(new_rows)
        names = [f.name for f in src.schema]
        if names != schema.names:
            raise SnapshotError(f"cannot append to snapshot {manifest.id[:12]}: the new rows have columns {names}, "
                                f"expected {schema.names}")
        per_chunk = msgspec.json.decode(_read_blob(s, manifest, manifest.chunk_stats, "chunk statistics"),
                                        type=list[list[st.Partial]])
        full = manifest.core.rows // ck.CHUNK_ROWS
        kept = [_Written(c, True, p) for c, p in zip(manifest.core.chunks[:full], per_chunk[:full])]
        head: list[pa.RecordBatch] = []
        if len(manifest.core.chunks) > full:
            head = [_read_chunk(s, manifest, full)]

        def batches() -> Iterator[pa.RecordBatch]:
            yield from head
            for b in src.batches:
                yield _cast(b, schema, manifest.id)

        written = _write_chunks(s, batches(), schema, full * ck.CHUNK_ROWS)
        return _commit(s, schema, kept + written, name, manifest.id)


def _cast(batch: pa.RecordBatch, schema: pa.Schema, base_id: str) -> pa.RecordBatch:
    if batch.schema == schema:
        return batch
    cols = []
    for col, f in zip(batch.columns, schema):
        try:
            cols.append(ck.canonical_array(col, f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise SnapshotError(f"cannot append to snapshot {base_id[:12]}: column {f.name!r} is {col.type}, "
                                f"expected {f.type} ({e})") from e
    return pa.RecordBatch.from_arrays(cols, schema=schema)


# -- reading ------------------------------------------------------------------------------


def _read_blob(store: Store, manifest: Manifest, digest: str, what: str) -> bytes:
    try:
        return store.blobs.read_bytes(digest)
    except IntegrityError as e:
        raise SnapshotCorrupt(f"snapshot {manifest.id[:12]}: its {what} is unreadable: {e}") from e


def read_manifest(ref: str, store: Store | str | os.PathLike | None = None) -> Manifest:
    """The manifest of a snapshot (by id, unique id prefix or name), checked against its id."""
    with open_store(store) as s:
        info = catalog.resolve(s.db, ref)
        try:
            manifest = decode_manifest(s.blobs.read_bytes(info.manifest_digest))
        except (IntegrityError, msgspec.DecodeError) as e:
            raise SnapshotCorrupt(f"snapshot {info.id[:12]}: its manifest is unreadable: {e}") from e
        if manifest.core.snapshot_id() != info.id:
            raise SnapshotCorrupt(f"snapshot {info.id[:12]}: its manifest describes other data "
                                  f"({manifest.core.snapshot_id()[:12]})")
        return manifest


def _read_schema(store: Store, manifest: Manifest) -> pa.Schema:
    return ck.deserialize_schema(_read_blob(store, manifest, manifest.core.schema_digest, "schema"))


def _read_chunk(store: Store, manifest: Manifest, index: int) -> pa.RecordBatch:
    c = manifest.core.chunks[index]
    start = index * manifest.core.chunk_rows
    try:
        batch = ck.deserialize(store.blobs.read_bytes(c.digest))
    except IntegrityError as e:
        raise SnapshotCorrupt(f"snapshot {manifest.id[:12]}: chunk {index} (rows {start}-{start + c.rows - 1}) "
                              f"is corrupt and was refused: {e}") from e
    if batch.num_rows != c.rows:
        raise SnapshotCorrupt(f"snapshot {manifest.id[:12]}: chunk {index} holds {batch.num_rows} rows, "
                              f"the manifest says {c.rows}")
    return batch


def load_snapshot(ref: str, store: Store | str | os.PathLike | None = None) -> pa.Table:
    """The snapshot's data, exactly as it was taken; every chunk's sha256 is checked."""
    with open_store(store) as s:
        manifest = read_manifest(ref, s)
        schema = _read_schema(s, manifest)
        n = len(manifest.core.chunks)
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="snapshot-read") as pool:
            batches = list(pool.map(lambda i: _read_chunk(s, manifest, i), range(n)))
        for i, b in enumerate(batches):
            if b.schema != schema:
                raise SnapshotCorrupt(f"snapshot {manifest.id[:12]}: chunk {i} has schema {b.schema}, "
                                      f"expected {schema}")
        return pa.Table.from_batches(batches, schema=schema)


def to_numpy(data, store: Store | str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """A table (or a snapshot, by id) as {column: numpy array}. Columns without nulls come back
    with their exact values and dtype (strings as numpy str arrays, fixed-size lists as 2-D
    arrays); with nulls, numbers become float64 with NaN and strings object arrays with None."""
    table = load_snapshot(data, store) if isinstance(data, str) else data
    out = {}
    for name, col in zip(table.column_names, table.columns):
        arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        if pa.types.is_fixed_size_list(arr.type) and arr.null_count == 0:
            width = arr.type.list_size
            values = arr.flatten().to_numpy(zero_copy_only=False)
            out[name] = values.reshape(len(arr), width)
        elif (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)) and arr.null_count == 0:
            out[name] = np.array(arr.to_pylist(), dtype=str) if len(arr) else np.array([], dtype=str)
        else:
            out[name] = arr.to_numpy(zero_copy_only=False)
    return out


def list_snapshots(store: Store | str | os.PathLike | None = None) -> list[SnapshotInfo]:
    """Every snapshot in the store, oldest first."""
    with open_store(store) as s:
        return catalog.list_all(s.db)
