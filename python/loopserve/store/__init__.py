"""The embedded lifecycle store: one directory holds SQLite metadata and content-addressed blobs.

Layout of a store root::

    ROOT/loopserve.db        SQLite (WAL): snapshots, runs, registry metadata
    ROOT/blobs/ab/cdef...    content-addressed files (sha256), written atomically

The root is, in order: the path passed in, `$LOOPSERVE_STORE`, or `.loopserve` in the current
directory (the embedded default: the store lives with the project, no server to run).
"""

from loopserve.store.blobs import BlobStore, IntegrityError
from loopserve.store.db import connect, transaction
from loopserve.store.names import validate_name
from loopserve.store.root import Store, open_store, store_root

__all__ = ["BlobStore", "IntegrityError", "Store", "connect", "open_store", "store_root", "transaction",
           "validate_name"]
