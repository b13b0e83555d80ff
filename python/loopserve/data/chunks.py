"""Canonical chunks: fixed row counts at absolute offsets, serialized to identical bytes.

CHUNK_ROWS = 65,536. Chunk k always holds rows [k * CHUNK_ROWS, (k+1) * CHUNK_ROWS), whatever
the input's own batches were, so appending rows leaves every earlier full chunk byte for byte
the same (shared, not rewritten). The size trades the cost per blob (a file, an fsync, a
catalog entry: ~400 blobs for a 1 GB table of 40-byte rows) against the rewrite on append
(at most one partial chunk: 2.5 MB at 40 bytes a row) and the memory held per chunk in flight.

A chunk is an Arrow IPC stream holding one record batch, uncompressed (the bytes must not
depend on a codec's version) with a schema stripped of metadata and with every field
nullable. Buffers that Arrow does not define are made canonical before writing: slots under
nulls are zeroed (decimals too), nested columns (lists, structs) are built again from their
values, arrays start at offset 0, dictionaries are decoded to their values.
"""

from __future__ import annotations

import decimal
import hashlib
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

CHUNK_ROWS = 65_536

_IPC = pa.ipc.IpcWriteOptions(compression=None)


def canonical_schema(schema: pa.Schema) -> pa.Schema:
    """Field names and types only: no metadata, every field nullable, dictionaries decoded."""
    fields = []
    for f in schema:
        t = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
        fields.append(pa.field(f.name, t, nullable=True))
    return pa.schema(fields)


def _zero_value(t: pa.DataType):
    if pa.types.is_boolean(t):
        return pa.scalar(False, t)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pa.scalar("", t)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return pa.scalar(b"", t)
    if pa.types.is_integer(t):
        return pa.scalar(0, t)
    if pa.types.is_floating(t):
        return pa.scalar(0.0, t)
    if pa.types.is_decimal(t):
        return pa.scalar(decimal.Decimal(0)).cast(t)
    if pa.types.is_temporal(t):
        try:
            return pa.scalar(0, pa.int64()).cast(t)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
    return None


def canonical_array(arr: pa.Array | pa.ChunkedArray, t: pa.DataType) -> pa.Array:
    """One contiguous array at offset 0, with zeros in the slots under nulls."""
    if isinstance(arr, pa.ChunkedArray):
        arr = pa.concat_arrays(arr.chunks) if arr.num_chunks != 1 else arr.chunk(0)
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if arr.type != t:
        arr = arr.cast(t)
    if pa.types.is_nested(t):
        # Values under a null list or struct slot, or under a null inside one, are anything:
        # built again from the values (through Python: slow, but nested columns are rare), every
        # null holds nothing (a list) or nulls of its own (a struct's fields), zeroed.
        return pa.array(arr.to_pylist(), type=t)
    if arr.null_count == 0:
        return arr  # the IPC writer slices buffers of an offset array itself; no validity is written
    zero = _zero_value(t)
    if zero is None:
        return pa.concat_arrays([arr])  # other types: at least contiguous at offset 0
    # fill_null rewrites every slot under a null; its output is fresh, at offset 0
    filled = pc.fill_null(arr, zero)
    valid = pc.is_valid(arr)
    if filled.offset or valid.offset:  # not seen with pyarrow 26; kept correct should that change
        filled, valid = pa.concat_arrays([filled]), pa.concat_arrays([valid])
    return pa.Array.from_buffers(t, len(arr), [valid.buffers()[1], *filled.buffers()[1:]],
                                 null_count=arr.null_count)


def canonical_batch(table: pa.Table | pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """The rows of `table` as one record batch in the canonical form of `schema`."""
    columns = [canonical_array(table.column(i), f.type) for i, f in enumerate(schema)]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def serialize(batch: pa.RecordBatch) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema, options=_IPC) as writer:
        writer.write_batch(batch)
    return sink.getvalue()


def deserialize(data: bytes | pa.Buffer) -> pa.RecordBatch:
    """The batch of a chunk, zero-copy over `data`."""
    return pa.ipc.open_stream(pa.py_buffer(data) if isinstance(data, bytes) else data).read_next_batch()


def serialize_schema(schema: pa.Schema) -> bytes:
    return schema.serialize().to_pybytes()


def deserialize_schema(data: bytes) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(data))


def sha256(data) -> str:
    return hashlib.sha256(data).hexdigest()


def rechunk(batches: Iterable[pa.RecordBatch],
            chunk_rows: int = CHUNK_ROWS, first_offset: int = 0) -> Iterator[pa.Table]:
    """Regroup a stream of batches into tables of exactly `chunk_rows` rows (the last may be
    shorter). `first_offset` is the absolute row index of the first row; a stream that starts
    mid-chunk first fills that chunk up, so boundaries stay at multiples of `chunk_rows`.
    Zero-copy: the tables are slices of the input batches."""
    pending: list[pa.RecordBatch] = []
    have = 0
    need = chunk_rows - (first_offset % chunk_rows)
    for batch in batches:
        while batch.num_rows:
            take = min(need - have, batch.num_rows)
            pending.append(batch.slice(0, take))
            have += take
            batch = batch.slice(take)
            if have == need:
                yield pa.Table.from_batches(pending)
                pending, have, need = [], 0, chunk_rows
    if have:
        yield pa.Table.from_batches(pending)
