"""Where the store lives, and the handle that opens its two halves.

A store location is a directory (SQLite metadata in `DIR/loopserve.db`, blobs in `DIR/blobs`) or
a PostgreSQL URL, `postgresql://user:password@host:5432/db?dir=/shared/loopserve`, whose `dir`
(else `$LOOPSERVE_STORE_DIR`, else `./.loopserve`) holds the blobs and caches: a directory every
replica mounts (a ReadWriteMany volume) when the store is shared across machines.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from loopserve.store.blobs import BlobStore
from loopserve.store.db import Database, connect, connect_sqlite, is_postgres_url

ENV_VAR = "LOOPSERVE_STORE"
DIR_ENV_VAR = "LOOPSERVE_STORE_DIR"
DEFAULT_DIR = ".loopserve"
SQLITE_SCHEME = "sqlite:///"


def store_location(explicit: str | os.PathLike | None = None) -> str | Path:
    """The store's location: `explicit`, else `$LOOPSERVE_STORE`, else `./.loopserve`.
    A PostgreSQL URL is returned as a string, a directory as a Path (`sqlite:///DIR` is DIR)."""
    value = explicit or os.environ.get(ENV_VAR)
    if not value:
        return Path.cwd() / DEFAULT_DIR
    if is_postgres_url(value):
        return str(value)
    if isinstance(value, str) and value.startswith(SQLITE_SCHEME):
        return Path("/" + value[len(SQLITE_SCHEME):].lstrip("/"))
    return Path(value)


def store_root(explicit: str | os.PathLike | None = None) -> Path:
    """The local directory of the store: its own directory, or a PostgreSQL store's blob directory."""
    location = store_location(explicit)
    return split_postgres_url(location)[1] if isinstance(location, str) else location


def split_postgres_url(url: str) -> tuple[str, Path]:
    """(the URL psycopg connects to, the blob directory): `dir` is ours, not a libpq parameter."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    dirs = [v for k, v in query if k == "dir"]
    rest = [(k, v) for k, v in query if k != "dir"]
    directory = dirs[-1] if dirs else os.environ.get(DIR_ENV_VAR) or str(Path.cwd() / DEFAULT_DIR)
    return urlunsplit(parts._replace(query=urlencode(rest))), Path(directory)


class Store:
    """An opened store: `db` (the metadata database, see store.db) and `blobs` (content-addressed files).

    Not shared between threads: open one Store per thread or process. Several Stores (in several
    processes, on several machines for a PostgreSQL store) may use the same store at once.
    `location` reopens it (a path or a URL, for a child process); `root` is its local directory.
    """

    def __init__(self, location: str | os.PathLike | None = None):
        where = store_location(location)
        self.db: Database
        if isinstance(where, str):
            self.location = where
            url, self.root = split_postgres_url(where)
            self.root.mkdir(parents=True, exist_ok=True)
            self.db = connect(url)
        else:
            self.location = str(where)
            self.root = where
            self.root.mkdir(parents=True, exist_ok=True)
            self.db = connect_sqlite(self.root / "loopserve.db")
        self.blobs = BlobStore(self.root / "blobs")

    @property
    def dialect(self) -> str:
        return self.db.dialect

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def open_store(store: "Store | str | os.PathLike | None",
               prepare: Callable[["Store"], object] | None = None) -> Iterator[Store]:
    """An open Store used as is (left open), or the one at a location / the default, opened
    for the block and closed after. `prepare` makes sure an area's tables exist."""
    if isinstance(store, Store):
        if prepare is not None:
            prepare(store)
        yield store
        return
    with Store(store) as own:
        if prepare is not None:
            prepare(own)
        yield own
