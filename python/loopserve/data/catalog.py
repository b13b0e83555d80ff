"""The store's index of snapshots (the manifests themselves are blobs)."""

from __future__ import annotations

import string
import time

from loopserve.data.errors import SnapshotNotFound
from loopserve.data.manifest import SnapshotInfo
from loopserve.store.db import Database, ensure_schema, transaction

DDL = """
CREATE TABLE IF NOT EXISTS data_snapshots (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    name TEXT,
    parent TEXT,
    rows INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    chunks INTEGER NOT NULL,
    manifest_digest TEXT NOT NULL,
    named_at REAL  -- when `name` was last given to it: a name resolves to the snapshot given it last
);
CREATE INDEX IF NOT EXISTS data_snapshots_name ON data_snapshots (name, created_at)
"""

MIN_PREFIX = 6  # hex digits of an id prefix accepted where an id is expected


def ensure(conn: Database) -> None:
    ensure_schema(conn, DDL)
    if "named_at" not in conn.columns("data_snapshots"):  # a store made before the column existed
        with transaction(conn):
            conn.execute("ALTER TABLE data_snapshots ADD COLUMN named_at REAL")


def record(conn: Database, snapshot_id: str, *, name: str | None, parent: str | None, rows: int,
           nbytes: int, chunks: int, manifest_digest: str) -> tuple[float, str | None, str | None]:
    """Index a snapshot (one transaction). The same data snapshotted again keeps its first
    creation time; a new name replaces the old one. Returns (created_at, name, parent)."""
    ensure(conn)
    with transaction(conn):
        conn.execute(
            "INSERT INTO data_snapshots (id, created_at, name, parent, rows, bytes, chunks, manifest_digest, named_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
            "name = COALESCE(excluded.name, data_snapshots.name), "
            "parent = COALESCE(data_snapshots.parent, excluded.parent), "
            "named_at = COALESCE(excluded.named_at, data_snapshots.named_at)",
            (snapshot_id, time.time(), name, parent, rows, nbytes, chunks, manifest_digest,
             time.time() if name else None))
        row = conn.execute("SELECT created_at, name, parent FROM data_snapshots WHERE id = ?",
                           (snapshot_id,)).fetchone()
    return row["created_at"], row["name"], row["parent"]


def _info(row) -> SnapshotInfo:
    return SnapshotInfo(id=row["id"], rows=row["rows"], bytes=row["bytes"], chunks=row["chunks"], chunks_reused=0,
                        name=row["name"], parent=row["parent"], created_at=row["created_at"],
                        manifest_digest=row["manifest_digest"])


def list_all(conn: Database) -> list[SnapshotInfo]:
    ensure(conn)
    return [_info(r) for r in conn.execute("SELECT * FROM data_snapshots ORDER BY created_at, id")]


def resolve(conn: Database, ref: str) -> SnapshotInfo:
    """A snapshot by full id, unique id prefix (>= 6 hex digits) or name (the one given it last)."""
    ensure(conn)
    if not isinstance(ref, str) or not ref:
        raise SnapshotNotFound(f"no snapshot {ref!r}: expected an id, an id prefix or a name")
    row = conn.execute("SELECT * FROM data_snapshots WHERE id = ?", (ref,)).fetchone()
    if row:
        return _info(row)
    if len(ref) >= MIN_PREFIX and all(c in string.hexdigits for c in ref):
        rows = conn.execute("SELECT * FROM data_snapshots WHERE id LIKE ? LIMIT 2", (ref.lower() + "%",)).fetchall()
        if len(rows) == 2:
            raise SnapshotNotFound(f"snapshot id prefix {ref!r} is ambiguous: give more digits")
        if rows:
            return _info(rows[0])
    row = conn.execute("SELECT * FROM data_snapshots WHERE name = ? "
                       "ORDER BY COALESCE(named_at, created_at) DESC, id LIMIT 1", (ref,)).fetchone()
    if row:
        return _info(row)
    raise SnapshotNotFound(f"no snapshot {ref!r} in the store: expected an id, a unique id prefix "
                           f"(at least {MIN_PREFIX} hex digits) or a snapshot name (see `loopserve data list`)")
