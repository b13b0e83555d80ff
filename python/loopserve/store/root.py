"""Where the store lives, and the handle that opens its two halves."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Callable, Iterator

from loopserve.store.blobs import BlobStore
from loopserve.store.db import connect

ENV_VAR = "LOOPSERVE_STORE"
DEFAULT_DIR = ".loopserve"


def store_root(explicit: str | os.PathLike | None = None) -> Path:
    """The store root: `explicit`, else `$LOOPSERVE_STORE`, else `./.loopserve`."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return Path.cwd() / DEFAULT_DIR


class Store:
    """An opened store root: `db` (a SQLite connection) and `blobs` (content-addressed files).

    Not shared between threads: SQLite connections are per thread, so open one Store per thread
    or process. Several Stores (in several processes) may use the same root at once.
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = store_root(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.blobs = BlobStore(self.root / "blobs")
        self.db: sqlite3.Connection = connect(self.root / "loopserve.db")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def open_store(store: "Store | str | os.PathLike | None",
               prepare: Callable[["Store"], object] | None = None) -> Iterator[Store]:
    """An open Store used as is (left open), or the one at a path / the default root, opened
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
