"""Versioned data: content-addressed snapshots with manifests, and validation of new data.

    from loopserve import data
    info = data.snapshot("train.parquet", name="train")      # or a CSV, .npz, Table, dict of arrays
    table = data.load_snapshot(info.id)                       # bitwise the original data
    grown = data.snapshot_append(info.id, new_rows)           # shares every unchanged full chunk
    schema = data.infer_schema(info.id)                       # types, ranges, categories, bounds
    data.validate("incoming.csv", schema).raise_for_failures()
"""

from loopserve.data.chunks import CHUNK_ROWS
from loopserve.data.errors import DataValidationError, SnapshotCorrupt, SnapshotError, SnapshotNotFound
from loopserve.data.manifest import ColumnStats, Manifest, SnapshotInfo
from loopserve.data.snapshot import (list_snapshots, load_snapshot, read_manifest, snapshot, snapshot_append,
                                     to_numpy)

__all__ = [
    "CHUNK_ROWS",
    "ColumnStats",
    "DataValidationError",
    "Manifest",
    "SnapshotCorrupt",
    "SnapshotError",
    "SnapshotInfo",
    "SnapshotNotFound",
    "list_snapshots",
    "load_snapshot",
    "read_manifest",
    "snapshot",
    "snapshot_append",
    "to_numpy",
]

from loopserve.data.schema import ColumnRule, DataSchema, dump_schema, infer_schema, load_schema  # noqa: E402
from loopserve.data.validate import Check, ValidationReport, validate  # noqa: E402

__all__ += ["Check", "ColumnRule", "DataSchema", "ValidationReport", "dump_schema", "infer_schema", "load_schema",
            "validate"]
