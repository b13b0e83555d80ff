"""The schema new data is checked against: per column a type, a range, allowed categories, a
null fraction, and statistical bounds against a reference snapshot.

Written by hand (YAML, JSON or TOML) or inferred from a reference snapshot:

    columns:
      - {name: amount, type: double, min: 0, max: 10000, max_null_fraction: 0.01,
         max_mean_shift: 0.5, ref_mean: 102.3, ref_std: 40.1}
      - {name: country, type: string, categories: [DE, FR, US]}
    allow_extra_columns: true

Statistical bounds, kept simple (and independent of the batch size, unlike a test whose
standard error shrinks with the rows and fails large batches on negligible shifts):
`max_mean_shift` k: |mean - ref_mean| <= k * ref_std (the mean may move k reference standard
deviations); `max_std_ratio` r: 1/r <= std / ref_std <= r. Both over values neither null nor NaN.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import msgspec

from loopserve.errors import ConfigError

GENERIC_TYPES = ("integer", "float", "numeric", "string", "bool", "timestamp")


class ColumnRule(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The rules for one column; a rule left out (None) is not checked."""

    name: str
    type: str | None = None  # an Arrow type ("int64", "double", "string") or one of GENERIC_TYPES
    required: bool = True
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    max_null_fraction: float | None = None  # nulls and NaNs over rows
    max_mean_shift: float | None = None  # in reference standard deviations
    max_std_ratio: float | None = None
    ref_mean: float | None = None  # the reference statistics; a `reference=` snapshot overrides them
    ref_std: float | None = None


class DataSchema(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    columns: list[ColumnRule]
    allow_extra_columns: bool = True
    reference: str | None = None  # the snapshot id the schema was inferred from

    def column(self, name: str) -> ColumnRule | None:
        return next((c for c in self.columns if c.name == name), None)


def check_schema(schema: DataSchema, where: str = "schema") -> DataSchema:
    """Raise ConfigError on rules that cannot hold together; return the schema."""
    seen = set()
    for i, c in enumerate(schema.columns):
        at = f"{where}: columns[{i}] ({c.name!r})"
        if c.name in seen:
            raise ConfigError(f"{at}: column {c.name!r} appears twice")
        seen.add(c.name)
        if c.min is not None and c.max is not None and c.min > c.max:
            raise ConfigError(f"{at}: min {c.min} > max {c.max}")
        if c.max_null_fraction is not None and not 0 <= c.max_null_fraction <= 1:
            raise ConfigError(f"{at}: max_null_fraction {c.max_null_fraction}: expected a fraction in [0, 1]")
        if c.max_mean_shift is not None and c.max_mean_shift < 0:
            raise ConfigError(f"{at}: max_mean_shift {c.max_mean_shift}: expected >= 0")
        if c.max_std_ratio is not None and c.max_std_ratio < 1:
            raise ConfigError(f"{at}: max_std_ratio {c.max_std_ratio}: expected >= 1")
    return schema


def load_schema(path: str | os.PathLike) -> DataSchema:
    """A DataSchema from a YAML, JSON or TOML file; a bad key or value names the file and where."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read schema file {path}: {e.strerror}") from None
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            schema = msgspec.yaml.decode(raw, type=DataSchema)
        elif suffix == ".toml":
            schema = msgspec.toml.decode(raw, type=DataSchema)
        elif suffix == ".json":
            schema = msgspec.json.decode(raw, type=DataSchema)
        else:
            raise ConfigError(f"schema file {path}: unknown suffix {suffix!r}, expected .yaml, .yml, .json or .toml")
    except msgspec.ValidationError as e:
        raise ConfigError(f"schema file {path}: {e}") from None
    except msgspec.DecodeError as e:
        raise ConfigError(f"schema file {path} is not valid {suffix[1:].upper()}: {e}") from None
    return check_schema(schema, str(path))


def dump_schema(schema: DataSchema, path: str | os.PathLike | None = None, fmt: str = "yaml") -> bytes:
    """The schema as YAML (or JSON); written to `path` when given."""
    if path is not None and Path(path).suffix.lower() == ".json":
        fmt = "json"
    data = msgspec.yaml.encode(schema) if fmt == "yaml" else msgspec.json.format(msgspec.json.encode(schema))
    if path is not None:
        Path(path).write_bytes(data)
    return data


def infer_schema(ref, store=None, *, range_margin: float = 0.1, null_slack: float = 0.01,
                 max_mean_shift: float = 0.5, max_std_ratio: float = 2.0, category_limit: int = 50) -> DataSchema:
    """A schema from a reference snapshot (id, id prefix, name, or its Manifest).

    Per column: its exact type; numeric: the observed [min, max] widened by `range_margin` of
    its span on each side, the mean and std as reference with `max_mean_shift` and
    `max_std_ratio`; strings with at most `category_limit` distinct values: those values as
    the allowed categories; every column: the observed null fraction + `null_slack`.
    """
    from loopserve.data.manifest import Manifest
    from loopserve.data.snapshot import read_manifest

    manifest = ref if isinstance(ref, Manifest) else read_manifest(ref, store)
    rows = manifest.core.rows
    columns = []
    for col, s in zip(manifest.core.columns, manifest.stats):
        rule = ColumnRule(name=col.name, type=col.type)
        missing = (s.nulls + s.nans) / rows if rows else 0.0
        rule.max_null_fraction = round(min(1.0, missing + null_slack), 6)
        if s.kind == "numeric" and s.min is not None:
            span = float(s.max) - float(s.min)
            rule.min = _round(float(s.min) - range_margin * span, math.floor)
            rule.max = _round(float(s.max) + range_margin * span, math.ceil)
            rule.ref_mean, rule.ref_std = s.mean, s.std
            rule.max_mean_shift, rule.max_std_ratio = max_mean_shift, max_std_ratio
        if s.kind == "categorical" and s.categories is not None and len(s.categories) <= category_limit:
            rule.categories = list(s.categories)
        columns.append(rule)
    return DataSchema(columns=columns, reference=manifest.id)


def _round(v: float, direction) -> float:
    """`v` rounded outward (floor or ceil) to 4 significant digits: a readable bound, never tighter."""
    if v == 0 or not math.isfinite(v):
        return v
    scale = 10 ** (math.floor(math.log10(abs(v))) - 3)
    return float(direction(v / scale) * scale) if scale >= 1 else direction(v / scale) / round(1 / scale)
