"""The lifecycle store: metadata (snapshots, runs, registry) in a database, blobs in a directory.

Embedded (the default), one directory holds both::

    ROOT/loopserve.db        SQLite (WAL): snapshots, runs, registry metadata
    ROOT/blobs/ab/cdef...    content-addressed files (sha256), written atomically

Shared by a fleet, the metadata is on PostgreSQL (`postgresql://...?dir=/shared/loopserve`) and
the blobs in that URL's `dir`, a directory every replica mounts. The location is, in order: the
one passed in, `$LOOPSERVE_STORE`, or `.loopserve` in the current directory.
"""

from loopserve.store.blobs import BlobStore, IntegrityError
from loopserve.store.db import connect, transaction
from loopserve.store.names import validate_name
from loopserve.store.root import Store, open_store, store_location, store_root

__all__ = ["BlobStore", "IntegrityError", "Store", "connect", "open_store", "store_location", "store_root",
           "transaction", "validate_name"]
