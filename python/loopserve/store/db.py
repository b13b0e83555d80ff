"""The store's metadata database: one interface over SQLite (embedded) and PostgreSQL (shared).

Both implementations offer the same few operations, written in SQL both engines accept
(`?` placeholders, `INSERT ... ON CONFLICT`):

- `execute(sql, params)` / `executemany(sql, rows)`: outside a transaction each statement commits
  on its own; rows read both by position and by column name.
- `transaction(scope)`: one write transaction, serialized against every other writer in the same
  `scope` (SQLite: all writers, BEGIN IMMEDIATE; PostgreSQL: an advisory lock per scope), so a
  read-then-write such as "the next version number" cannot interleave with another process's.
- `read()`: several SELECTs that see one consistent state.
- `ensure_schema(ddl)`, `columns(table)`, `close()`.

`connect(location)` picks the engine: a `postgresql://` URL, else a SQLite file path.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Iterator, Protocol

BUSY_TIMEOUT_S = 30.0
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
GLOBAL_SCOPE = "store"  # the scope of a transaction that names none: every such writer queues on it


class Database(Protocol):
    dialect: str  # "sqlite" | "postgresql"

    def execute(self, sql: str, params=()): ...

    def executemany(self, sql: str, rows) -> None: ...

    def transaction(self, scope: str | None = None) -> contextlib.AbstractContextManager["Database"]: ...

    def read(self) -> contextlib.AbstractContextManager["Database"]: ...

    def ensure_schema(self, ddl: str) -> None: ...

    def columns(self, table: str) -> set[str]: ...

    def close(self) -> None: ...


def is_postgres_url(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)


class SqliteDatabase(sqlite3.Connection):
    """A sqlite3 connection with the store's interface. Not shared between threads."""

    dialect = "sqlite"

    @contextlib.contextmanager
    def transaction(self, scope: str | None = None) -> Iterator["SqliteDatabase"]:
        """BEGIN IMMEDIATE takes the database's one write lock at the start, whatever the scope:
        concurrent writers queue on the busy timeout instead of failing at commit or computing the
        same number."""
        self.execute("BEGIN IMMEDIATE")
        try:
            yield self
            self.execute("COMMIT")
        except BaseException:
            if self.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
                self.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def read(self) -> Iterator["SqliteDatabase"]:
        self.execute("BEGIN")
        try:
            yield self
        finally:
            self.execute("COMMIT")

    def ensure_schema(self, ddl: str) -> None:
        with self.transaction():
            for statement in split_statements(ddl):
                self.execute(statement)

    def columns(self, table: str) -> set[str]:
        return {row["name"] for row in self.execute(f"PRAGMA table_info({table})")}


def connect_sqlite(path: str | Path) -> SqliteDatabase:
    """Open (creating if needed) a SQLite metadata database.

    WAL lets readers run beside a writer; `synchronous=FULL` makes a committed change survive
    power loss, not only a crash of the process. Autocommit mode (isolation_level=None) so that
    `transaction()` decides where each transaction starts.
    """
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, factory=SqliteDatabase)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def connect(location: str | Path) -> Database:
    """The metadata database at `location`: a PostgreSQL URL or a SQLite file path."""
    if is_postgres_url(location):
        from loopserve.store.postgres import connect_postgres

        return connect_postgres(str(location))
    return connect_sqlite(location)


def split_statements(ddl: str) -> list[str]:
    return [s for s in ddl.split(";") if s.strip()]


def transaction(db: Database, scope: str | None = None) -> contextlib.AbstractContextManager[Database]:
    """`db.transaction(scope)`: one serialized write transaction."""
    return db.transaction(scope)


def ensure_schema(db: Database, ddl: str) -> None:
    """Create an area's tables if they are missing (`CREATE TABLE IF NOT EXISTS ...` statements)."""
    db.ensure_schema(ddl)
