"""The registry tables, and opening a store with them in place."""

from __future__ import annotations

import contextlib
import weakref
from typing import Iterator

from loopserve.store import Store, open_store
from loopserve.store.db import ensure_schema

DDL = """
CREATE TABLE IF NOT EXISTS registry_models (
    name TEXT PRIMARY KEY,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS registry_versions (
    name TEXT NOT NULL REFERENCES registry_models (name),
    version INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    run_id TEXT,
    data_snapshot TEXT,
    parent_version INTEGER,
    description TEXT,
    content_digest TEXT NOT NULL,      -- sha256 over (path, sha256, size) of every artifact
    size INTEGER NOT NULL,
    UNIQUE (name, version)             -- the backstop: two writers can never both get version N
);
CREATE TABLE IF NOT EXISTS registry_artifacts (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    path TEXT NOT NULL,                -- relative, '/'-separated
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (name, version, path),
    FOREIGN KEY (name, version) REFERENCES registry_versions (name, version)
);
CREATE TABLE IF NOT EXISTS registry_version_tags (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (name, version, key),
    FOREIGN KEY (name, version) REFERENCES registry_versions (name, version)
);
CREATE TABLE IF NOT EXISTS registry_version_metrics (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    key TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (name, version, key),
    FOREIGN KEY (name, version) REFERENCES registry_versions (name, version)
);
CREATE TABLE IF NOT EXISTS registry_aliases (
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER NOT NULL,
    set_at TEXT NOT NULL,
    PRIMARY KEY (name, alias),
    FOREIGN KEY (name, version) REFERENCES registry_versions (name, version)
);
CREATE TABLE IF NOT EXISTS registry_alias_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER NOT NULL,
    previous_version INTEGER,
    action TEXT NOT NULL,              -- set | rollback | delete (version: the one it left)
    set_at TEXT NOT NULL,              -- never earlier than the row before it (see aliases.py)
    actor TEXT,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS registry_alias_history_by_time ON registry_alias_history (name, alias, set_at)
"""

# Stores whose connection already has the tables: creating them takes the write lock, which
# `current_version` (polled every second by the server) should not pay.
_READY: "weakref.WeakSet[Store]" = weakref.WeakSet()


def prepare(store: Store) -> Store:
    """Make sure the registry (and tracking, for lineage) tables exist in `store`; returns it."""
    if store not in _READY:
        from loopserve.tracking.schema import prepare as prepare_tracking

        prepare_tracking(store)
        ensure_schema(store.db, DDL)
        _READY.add(store)
    return store


def opened(store: Store | None):
    """The given store (left open), or the default store opened for this call and closed after."""
    return open_store(store, prepare)


@contextlib.contextmanager
def snapshot_read(store: Store) -> Iterator[Store]:
    """Several SELECTs that see one consistent state (one read transaction)."""
    with store.db.read():
        yield store


def registry_scope(name: str) -> str:
    """The write scope of one model's registry rows: its version numbers and its aliases' moves
    are read-then-written under it (on PostgreSQL other models' writers go on meanwhile)."""
    return f"registry/{name}"
