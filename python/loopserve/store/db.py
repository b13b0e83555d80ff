"""SQLite for the store's metadata: WAL, a long busy timeout, one transaction per change."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Iterator

BUSY_TIMEOUT_S = 30.0


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (creating if needed) the metadata database.

    WAL lets readers run beside a writer; `synchronous=FULL` makes a committed change survive
    power loss, not only a crash of the process. Autocommit mode (isolation_level=None) so that
    `transaction()` decides where each transaction starts.
    """
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, taken with BEGIN IMMEDIATE.

    IMMEDIATE takes the write lock at the start, so a read-then-write (say, the next version
    number) cannot interleave with another writer's: concurrent writers queue on the busy
    timeout instead of failing at commit or computing the same number.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
            conn.execute("ROLLBACK")
        raise


def ensure_schema(conn: sqlite3.Connection, ddl: str) -> None:
    """Create an area's tables if they are missing (`CREATE TABLE IF NOT EXISTS ...` statements)."""
    with transaction(conn):
        for statement in ddl.split(";"):
            if statement.strip():
                conn.execute(statement)
