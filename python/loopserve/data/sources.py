"""Inputs a snapshot is taken from, as one stream of Arrow record batches.

Files are streamed, never read whole where Arrow can avoid it: Parquet by row groups, CSV by
blocks (types are inferred from the first block; if a later block does not fit them, the file
is read again whole, so that inference sees every row). In memory: a pyarrow Table or
RecordBatch, or a dict of numpy arrays (1-D columns; a 2-D array [rows, k] becomes a
fixed-size list column of width k, which `to_numpy` turns back into [rows, k]).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from loopserve.data.errors import SnapshotError

SUFFIXES = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}
_CSV_BLOCK = 16 << 20


class Source:
    """A schema and a one-shot iterator of batches with that schema."""

    def __init__(self, schema: pa.Schema, batches: Iterator[pa.RecordBatch], description: str,
                 fallback: Callable[[], "Source"] | None = None):
        self.schema = schema
        self.batches = batches
        self.description = description
        # Called when reading fails part way with pa.ArrowInvalid (a CSV block that does not fit
        # the types of the first block): a Source over the whole input, to start again from.
        self.fallback = fallback


def open_source(data) -> Source:
    """A Source for a path (CSV, Parquet, .npz), a pyarrow Table/RecordBatch or a dict of arrays."""
    if isinstance(data, (str, os.PathLike)):
        return _open_path(Path(data))
    if isinstance(data, pa.Table):
        return Source(data.schema, iter(data.to_batches()), "table")
    if isinstance(data, pa.RecordBatch):
        return Source(data.schema, iter([data]), "record batch")
    if isinstance(data, Mapping):
        table = table_from_arrays(data)
        return Source(table.schema, iter(table.to_batches()), "arrays")
    raise SnapshotError(f"cannot snapshot a {type(data).__name__}: expected a path to a CSV, Parquet or .npz file, "
                        f"a pyarrow Table, or a dict of numpy arrays")


def read_table(data) -> pa.Table:
    """The whole input as one table (for validation of new data)."""
    src = open_source(data)
    try:
        return pa.Table.from_batches(list(src.batches), schema=src.schema)
    except pa.ArrowInvalid as e:
        if src.fallback is None:
            raise SnapshotError(f"cannot read {src.description}: {e}") from e
        src = src.fallback()
        return pa.Table.from_batches(list(src.batches), schema=src.schema)


def table_from_arrays(arrays: Mapping) -> pa.Table:
    if not arrays:
        raise SnapshotError("no columns: the dict of arrays is empty")
    columns, lengths = {}, {}
    for name, values in arrays.items():
        if not isinstance(name, str):
            raise SnapshotError(f"column names must be strings, got {name!r}")
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            columns[name] = values
        else:
            a = np.asarray(values)
            if a.ndim == 1:
                columns[name] = pa.array(a)
            elif a.ndim == 2:
                flat = pa.array(np.ascontiguousarray(a).reshape(-1))
                columns[name] = pa.FixedSizeListArray.from_arrays(flat, a.shape[1])
            else:
                raise SnapshotError(f"column {name!r} has shape {a.shape}: expected 1-D [rows] or 2-D [rows, k]")
        lengths[name] = len(columns[name])
    if len(set(lengths.values())) > 1:
        raise SnapshotError(f"columns have different lengths: {lengths}")
    return pa.table(columns)


def _open_path(path: Path) -> Source:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise SnapshotError(f"cannot snapshot {path}: unknown file type {path.suffix!r}, expected "
                            f"{', '.join(sorted(SUFFIXES))}")
    if not path.is_file():
        raise SnapshotError(f"cannot snapshot {path}: no such file")
    try:
        if kind == "parquet":
            f = pq.ParquetFile(path)
            return Source(f.schema_arrow, f.iter_batches(batch_size=65_536), str(path))
        if kind == "npz":
            with np.load(path, allow_pickle=False) as z:
                table = table_from_arrays({k: z[k] for k in z.files})
            return Source(table.schema, iter(table.to_batches()), str(path))
        return _open_csv(path)
    except (pa.ArrowInvalid, OSError, ValueError) as e:
        if isinstance(e, SnapshotError):
            raise
        raise SnapshotError(f"cannot read {path} as {kind}: {e}") from e


def _open_csv(path: Path) -> Source:
    parse = pacsv.ParseOptions(delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    read = pacsv.ReadOptions(block_size=_CSV_BLOCK)

    def whole() -> Source:
        # Types inferred over every row: the fallback when a later block does not fit the first's.
        table = pacsv.read_csv(path, read_options=read, parse_options=parse)
        return Source(table.schema, iter(table.to_batches()), str(path))

    reader = pacsv.open_csv(path, read_options=read, parse_options=parse)
    return Source(reader.schema, iter(reader), str(path), fallback=whole)
