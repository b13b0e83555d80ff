"""Checking new data against a DataSchema: every rule checked is reported, passed or failed.

NaN counts as missing (with nulls) for the null fraction and is left out of ranges and
statistics; a range or category check looks at the values that are present.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from loopserve.data import stats as st
from loopserve.data.errors import DataValidationError
from loopserve.data.manifest import Manifest
from loopserve.data.schema import ColumnRule, DataSchema, load_schema

SHOWN = 5  # offending values named in a message


class Check(msgspec.Struct):
    column: str | None
    rule: str  # "present", "type", "null_fraction", "range", "categories", "mean_shift", "std_ratio", "extra"
    passed: bool
    message: str


class ValidationReport(msgspec.Struct):
    rows: int
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def raise_for_failures(self) -> "ValidationReport":
        """Raise DataValidationError naming every failed rule; return the report when all passed."""
        failed = self.failures
        if failed:
            lines = "\n".join(f"  {c.message}" for c in failed)
            raise DataValidationError(f"data failed validation ({len(failed)} of {len(self.checks)} checks, "
                                      f"{self.rows} rows):\n{lines}", self)
        return self

    def __str__(self) -> str:
        head = f"{'passed' if self.ok else 'FAILED'}: {len(self.checks) - len(self.failures)} of {len(self.checks)} " \
               f"checks passed on {self.rows} rows"
        return "\n".join([head] + [f"  [{'ok' if c.passed else 'FAIL'}] {c.message}" for c in self.checks])


def _num(v) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v) if isinstance(v, float) else str(v)


def _count(n: int) -> str:
    return f"{n} value" if n == 1 else f"{n} values"


def _listing(values: list, fmt) -> str:
    shown = ", ".join(fmt(v) for v in values[:SHOWN])
    return shown + (f", ... ({len(values) - SHOWN} more)" if len(values) > SHOWN else "")


def _type_matches(t: pa.DataType, expected: str) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    generic = {
        "integer": pa.types.is_integer, "float": pa.types.is_floating, "bool": pa.types.is_boolean,
        "numeric": lambda x: pa.types.is_integer(x) or pa.types.is_floating(x),
        "string": lambda x: pa.types.is_string(x) or pa.types.is_large_string(x) or pa.types.is_string_view(x),
        "timestamp": pa.types.is_timestamp,
    }
    return generic[expected](t) if expected in generic else str(t) == expected


def _as_table(data, store) -> pa.Table:
    from loopserve.data.snapshot import load_snapshot
    from loopserve.data.sources import SUFFIXES, read_table

    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, str) and not Path(data).exists() and Path(data).suffix.lower() not in SUFFIXES:
        return load_snapshot(data, store)  # a snapshot id, prefix or name
    return read_table(data)


def validate(data, schema: DataSchema | str | os.PathLike, reference=None, store=None) -> ValidationReport:
    """Check `data` (a pyarrow Table, a path to CSV/Parquet/.npz, a dict of arrays, or a snapshot
    id/name) against `schema` (a DataSchema or a schema file). `reference` (a snapshot id/name
    or its Manifest) supplies the reference mean and std of the statistical bounds, overriding
    those in the schema. Returns the report; call `.raise_for_failures()` to raise."""
    from loopserve.data.snapshot import read_manifest

    if not isinstance(schema, DataSchema):
        schema = load_schema(schema)
    ref = None
    if reference is not None:
        ref = reference if isinstance(reference, Manifest) else read_manifest(reference, store)
    table = _as_table(data, store)
    checks: list[Check] = []
    for rule in schema.columns:
        ref_stats = ref.column_stats(rule.name) if ref is not None else None
        checks.extend(_check_column(table, rule, ref_stats))
    if not schema.allow_extra_columns:
        known = [c.name for c in schema.columns]
        extra = [n for n in table.column_names if n not in known]
        for name in extra:
            checks.append(Check(name, "extra", False, f"column {name!r}: not in the schema (expected only "
                                                      f"{', '.join(repr(n) for n in known)})"))
        if not extra:
            checks.append(Check(None, "extra", True, "no columns beyond the schema's"))
    return ValidationReport(rows=table.num_rows, checks=checks)


def _check_column(table: pa.Table, rule: ColumnRule, ref_stats) -> list[Check]:
    name, out = rule.name, []
    label = f"column {name!r}"
    if name not in table.column_names:
        expected = f" (expected type {rule.type})" if rule.type else ""
        passed = not rule.required
        out.append(Check(name, "present", passed, f"{label}: missing{expected}" if passed is False
                         else f"{label}: absent (optional)"))
        return out
    col = table.column(name)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if rule.type is not None:
        ok = _type_matches(col.type, rule.type)
        out.append(Check(name, "type", ok, f"{label}: type {col.type}" + (f" matches {rule.type}" if ok else
                                                                          f", expected {rule.type}")))
        if not ok:
            return out  # value rules would only repeat the type error
    p = st.partial(col)
    rows = len(col)
    if rule.max_null_fraction is not None:
        missing = p.nulls + p.nans
        frac = missing / rows if rows else 0.0
        ok = frac <= rule.max_null_fraction
        out.append(Check(name, "null_fraction", ok,
                         f"{label}: null fraction {frac:.4g} {'<=' if ok else '>'} allowed {rule.max_null_fraction:g} "
                         f"({missing} of {rows} rows null or NaN)"))
    numeric = p.kind == "numeric"
    if numeric and (rule.min is not None or rule.max is not None):
        out.append(_check_range(col, rule, label))
    if rule.categories is not None:
        out.append(_check_categories(col, rule, label))
    if numeric and (rule.max_mean_shift is not None or rule.max_std_ratio is not None):
        s = st.finish(name, p)
        ref_mean = ref_stats.mean if ref_stats is not None else rule.ref_mean
        ref_std = ref_stats.std if ref_stats is not None else rule.ref_std
        if ref_mean is None or ref_std is None:
            for r in ("mean_shift", "std_ratio"):
                if getattr(rule, f"max_{r}") is not None:
                    out.append(Check(name, r, False, f"{label}: no reference statistics for {r}: set ref_mean and "
                                                     f"ref_std in the schema or pass a reference snapshot"))
        elif s.mean is None:
            out.append(Check(name, "mean_shift", False, f"{label}: no values to compare with the reference"))
        else:
            out.extend(_check_moments(s, rule, ref_mean, ref_std, label))
    return out


def _check_range(col, rule: ColumnRule, label: str) -> Check:
    lo = -math.inf if rule.min is None else rule.min
    hi = math.inf if rule.max is None else rule.max
    values = col.cast(pa.float64()) if pa.types.is_boolean(col.type) else col
    bad_mask = pc.or_(pc.less(values, pa.scalar(lo)), pc.greater(values, pa.scalar(hi)))
    bad = pc.filter(values, bad_mask)  # nulls drop out; NaN compares false either way
    bounds = f"[{'-inf' if rule.min is None else _num(rule.min)}, {'inf' if rule.max is None else _num(rule.max)}]"
    if len(bad) == 0:
        return Check(rule.name, "range", True, f"{label}: all values in range {bounds}")
    shown = pc.sort_indices(pc.unique(bad))
    distinct = pc.take(pc.unique(bad), shown).to_pylist()
    return Check(rule.name, "range", False,
                 f"{label}: {_count(len(bad))} out of range {bounds}: {_listing(distinct, str)}")


def _check_categories(col, rule: ColumnRule, label: str) -> Check:
    present = pc.drop_null(col)
    if not (pa.types.is_string(present.type) or pa.types.is_large_string(present.type)):
        present = present.cast(pa.string())
    allowed = pa.array(rule.categories, type=present.type)
    bad = pc.filter(present, pc.invert(pc.is_in(present, value_set=allowed)))
    if len(bad) == 0:
        return Check(rule.name, "categories", True, f"{label}: all values in the {len(rule.categories)} "
                                                    f"allowed categories")
    distinct = sorted(pc.unique(bad).to_pylist())
    count = _count(len(bad)) + (f" ({len(distinct)} distinct)" if len(distinct) != len(bad) else "")
    return Check(rule.name, "categories", False,
                 f"{label}: {count} not in allowed categories: {_listing(distinct, repr)}")


def _check_moments(s, rule: ColumnRule, ref_mean: float, ref_std: float, label: str) -> list[Check]:
    out = []
    if rule.max_mean_shift is not None:
        diff = abs(s.mean - ref_mean)
        shift = diff / ref_std if ref_std > 0 else (0.0 if diff == 0 else math.inf)
        ok = shift <= rule.max_mean_shift
        out.append(Check(rule.name, "mean_shift", ok,
                         f"{label}: mean {s.mean:.6g} is {shift:.3g} reference stds from the reference mean "
                         f"{ref_mean:.6g} (std {ref_std:.6g}); allowed {rule.max_mean_shift:g}"))
    if rule.max_std_ratio is not None:
        r = rule.max_std_ratio
        ratio = s.std / ref_std if ref_std > 0 else (1.0 if s.std == 0 else math.inf)
        ok = 1 / r <= ratio <= r
        out.append(Check(rule.name, "std_ratio", ok,
                         f"{label}: std {s.std:.6g} is {ratio:.3g}x the reference std {ref_std:.6g}; "
                         f"allowed between {1 / r:.3g}x and {r:g}x"))
    return out
