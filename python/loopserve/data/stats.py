"""Per-column statistics, computed per chunk and merged, so a snapshot's statistics never need
a second pass over its data and an append only computes those of its new chunks.

Numeric columns (integers, floats, booleans as 0/1) keep count, nulls, NaNs, min, max and the
moments (mean, M2) merged with Chan's parallel formula; NaN is left out of min, max and the
moments and counted apart. Strings and dictionaries keep exact value counts while they have at
most MAX_TRACKED_VALUES distinct values; past that only count and nulls are kept.
"""

from __future__ import annotations

import math

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from loopserve.data.manifest import ColumnStats

MAX_TRACKED_VALUES = 1000  # distinct values counted exactly per column
TOP_VALUES = 10  # most frequent values shown in a manifest
CATEGORY_LIMIT = 100  # a column with at most this many distinct values lists them all
_PROBE_ROWS = 4096


class Partial(msgspec.Struct, omit_defaults=True):
    """Mergeable statistics of one column over some rows."""

    kind: str
    count: int = 0  # non-null values
    nulls: int = 0
    nans: int = 0
    n: int = 0  # values in the moments: neither null nor NaN
    min: int | float | None = None
    max: int | float | None = None
    mean: float = 0.0
    m2: float = 0.0
    values: dict[str, int] | None = {}  # None: more distinct values than MAX_TRACKED_VALUES


def kind_of(t: pa.DataType) -> str:
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return "numeric"
    if pa.types.is_dictionary(t):
        return kind_of(t.value_type) if kind_of(t.value_type) == "categorical" else "other"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "categorical"
    return "other"


def _as_py_number(v):
    return v if isinstance(v, (int, float)) else None


def partial(arr: pa.Array | pa.ChunkedArray) -> Partial:
    """The statistics of one column (an array or a chunked array)."""
    kind = kind_of(arr.type)
    nulls = arr.null_count
    p = Partial(kind=kind, count=len(arr) - nulls, nulls=nulls)
    if kind == "numeric":
        if pa.types.is_boolean(arr.type):
            arr = arr.cast(pa.uint8())
        if pa.types.is_floating(arr.type):
            isnan = pc.is_nan(arr)
            p.nans = pc.sum(isnan).as_py() or 0
            if p.nans:
                arr = pc.filter(arr, pc.invert(isnan))  # drops NaN and nulls
        p.n = p.count - p.nans
        if p.n:
            mm = pc.min_max(arr)
            p.min, p.max = _as_py_number(mm["min"].as_py()), _as_py_number(mm["max"].as_py())
            p.mean = pc.mean(arr).as_py()
            p.m2 = pc.variance(arr, ddof=0).as_py() * p.n
    elif kind == "categorical":
        # A look at the first rows first: a column with many distinct values (ids, free text)
        # is seen to have them without hashing every row (a third of the write time otherwise).
        probe = arr.slice(0, _PROBE_ROWS) if len(arr) > _PROBE_ROWS else None
        vc = pc.value_counts(probe) if probe is not None else None
        if vc is None or len(vc) <= MAX_TRACKED_VALUES + 1:
            vc = pc.value_counts(arr)
        if len(vc) > MAX_TRACKED_VALUES + 1:  # +1: a null entry
            p.values = None
        else:
            keys = vc.field("values").cast(pa.string()).to_pylist()
            counts = vc.field("counts").to_pylist()
            p.values = {k: c for k, c in zip(keys, counts) if k is not None}
    return p


def merge(a: Partial, b: Partial) -> Partial:
    """The statistics of the rows of `a` and of `b` together."""
    out = Partial(kind=a.kind, count=a.count + b.count, nulls=a.nulls + b.nulls, nans=a.nans + b.nans,
                  n=a.n + b.n)
    if a.kind == "numeric" and out.n:
        if not a.n or not b.n:
            src = a if a.n else b
            out.min, out.max, out.mean, out.m2 = src.min, src.max, src.mean, src.m2
        else:
            out.min, out.max = min(a.min, b.min), max(a.max, b.max)
            delta = b.mean - a.mean
            out.mean = a.mean + delta * b.n / out.n
            out.m2 = a.m2 + b.m2 + delta * delta * a.n * b.n / out.n
    if a.kind == "categorical":
        if a.values is None or b.values is None:
            out.values = None
        else:
            values = dict(a.values)
            for k, c in b.values.items():
                values[k] = values.get(k, 0) + c
            out.values = values if len(values) <= MAX_TRACKED_VALUES else None
    return out


def merge_all(partials: list[Partial]) -> Partial:
    out = partials[0]
    for p in partials[1:]:
        out = merge(out, p)
    return out


def finish(name: str, p: Partial) -> ColumnStats:
    """The statistics shown in a manifest, from merged partial statistics."""
    s = ColumnStats(name=name, kind=p.kind, count=p.count, nulls=p.nulls, nans=p.nans)
    if p.kind == "numeric" and p.n:
        s.min, s.max, s.mean = p.min, p.max, p.mean
        s.std = math.sqrt(max(p.m2, 0.0) / p.n)
    if p.kind == "categorical" and p.values is not None:
        s.distinct = len(p.values)
        s.top = sorted(p.values.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_VALUES]
        if s.distinct <= CATEGORY_LIMIT:
            s.categories = sorted(p.values)
    return s


def empty(t: pa.DataType) -> Partial:
    return Partial(kind=kind_of(t))


def table_partials(table: pa.Table | pa.RecordBatch) -> list[Partial]:
    return [partial(table.column(i)) for i in range(table.num_columns)]


def table_stats(table: pa.Table | pa.RecordBatch) -> list[ColumnStats]:
    """Statistics of every column of an in-memory table."""
    return [finish(name, p) for name, p in zip(table.schema.names, table_partials(table))]
