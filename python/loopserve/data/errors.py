"""The exceptions of `loopserve.data`."""

from __future__ import annotations

from loopserve.errors import LoopserveError
from loopserve.store.blobs import IntegrityError


class SnapshotError(LoopserveError):
    """A snapshot cannot be written or read: unknown id, unreadable input, mismatched schema."""


class SnapshotNotFound(SnapshotError, LookupError):
    """No snapshot has this id, id prefix or name."""


class SnapshotCorrupt(SnapshotError, IntegrityError):
    """A chunk, schema or manifest of a snapshot no longer matches its sha256: refused."""


class DataValidationError(LoopserveError, ValueError):
    """Data failed validation; the message names each column, rule and offending values.

    `report` holds the full ValidationReport (every rule checked, passed or not).
    """

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report
