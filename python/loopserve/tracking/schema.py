"""The tracking tables, and opening a store with them in place."""

from __future__ import annotations

import weakref

from loopserve.store import Store, open_store
from loopserve.store.db import ensure_schema

DDL = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    experiment TEXT NOT NULL,
    status TEXT NOT NULL,              -- running | finished | failed
    start_time TEXT NOT NULL,
    end_time TEXT,
    error TEXT,
    data_snapshot TEXT,
    entrypoint TEXT,
    git_sha TEXT,
    git_dirty INTEGER,
    git_root TEXT,
    python TEXT NOT NULL,
    platform TEXT NOT NULL,
    packages TEXT NOT NULL,            -- JSON {name: version}
    command TEXT NOT NULL,             -- JSON [argv...]
    cwd TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_experiment ON runs (experiment, start_time);
CREATE TABLE IF NOT EXISTS run_params (
    run_id TEXT NOT NULL REFERENCES runs (id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,               -- JSON, so types survive (reproduce passes them back)
    PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS run_metrics (
    run_id TEXT NOT NULL REFERENCES runs (id),
    key TEXT NOT NULL,
    step INTEGER NOT NULL,
    value REAL NOT NULL,
    logged_at TEXT NOT NULL,
    seq INTEGER PRIMARY KEY AUTOINCREMENT
);
CREATE INDEX IF NOT EXISTS run_metrics_by_run ON run_metrics (run_id, key, step);
CREATE TABLE IF NOT EXISTS run_tags (
    run_id TEXT NOT NULL REFERENCES runs (id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS run_artifacts (
    run_id TEXT NOT NULL REFERENCES runs (id),
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (run_id, name)
)
"""

# Stores whose connection already has the tables: creating them takes the write lock, which
# a poller or a reader should not pay on every call.
_READY: "weakref.WeakSet[Store]" = weakref.WeakSet()


def prepare(store: Store) -> Store:
    """Make sure the tracking tables exist in `store`; returns it."""
    if store not in _READY:
        ensure_schema(store.db, DDL)
        _READY.add(store)
    return store


def opened(store: Store | None):
    """The given store (left open), or the default store opened for this call and closed after."""
    return open_store(store, prepare)
