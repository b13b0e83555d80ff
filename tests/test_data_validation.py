"""Validation of new data: each rule caught, with a message naming the column, the rule and the values."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopserve import data
from loopserve.data import ColumnRule, DataSchema
from loopserve.errors import ConfigError, LoopserveError


def failure(report, rule):
    return [c.message for c in report.failures if c.rule == rule]


def test_range_rule_names_the_values():
    schema = DataSchema(columns=[ColumnRule(name="amount", min=0, max=10000)])
    table = pa.table({"amount": [5.0, -5.0, 12000.5, -1.0, None, float("nan"), 10000.0]})
    report = data.validate(table, schema)
    assert failure(report, "range") == ["column 'amount': 3 values out of range [0, 10000]: -5.0, -1.0, 12000.5"]
    with pytest.raises(data.DataValidationError) as e:
        report.raise_for_failures()
    assert "column 'amount': 3 values out of range [0, 10000]: -5.0, -1.0, 12000.5" in str(e.value)
    assert isinstance(e.value, LoopserveError) and e.value.report is report
    assert data.validate(pa.table({"amount": [0.0, 10000.0]}), schema).ok


def test_category_rule_names_the_values():
    schema = DataSchema(columns=[ColumnRule(name="country", categories=["DE", "FR", "US"])])
    report = data.validate(pa.table({"country": ["DE", "XX", None, "ZZ", "US"]}), schema)
    assert failure(report, "categories") == ["column 'country': 2 values not in allowed categories: 'XX', 'ZZ'"]
    report = data.validate(pa.table({"country": ["XX", "XX", "ZZ"]}).cast(
        pa.schema([("country", pa.dictionary(pa.int8(), pa.string()))])), schema)
    assert failure(report, "categories") == [
        "column 'country': 3 values (2 distinct) not in allowed categories: 'XX', 'ZZ'"]


def test_missing_column_wrong_type_and_extra_column():
    schema = DataSchema(columns=[ColumnRule(name="age", type="int64"), ColumnRule(name="id", type="integer"),
                                 ColumnRule(name="opt", type="string", required=False)],
                        allow_extra_columns=False)
    report = data.validate(pa.table({"id": pa.array([1, 2], pa.int32()), "age": ["x", "y"], "z": [1, 2]}), schema)
    assert failure(report, "type") == ["column 'age': type string, expected int64"]
    assert failure(report, "extra") == ["column 'z': not in the schema (expected only 'age', 'id', 'opt')"]
    assert not failure(report, "present")  # 'opt' is optional
    report = data.validate(pa.table({"id": [1]}), schema)
    assert failure(report, "present") == ["column 'age': missing (expected type int64)"]


def test_null_fraction_counts_nulls_and_nan():
    schema = DataSchema(columns=[ColumnRule(name="v", max_null_fraction=0.05)])
    report = data.validate(pa.table({"v": [1.0, None, float("nan"), 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]}), schema)
    assert failure(report, "null_fraction") == [
        "column 'v': null fraction 0.2 > allowed 0.05 (2 of 10 rows null or NaN)"]


def test_statistical_bounds_against_a_reference(tmp_path):
    rng = np.random.default_rng(0)
    ref = data.snapshot({"v": rng.normal(100, 10, 10_000)}, store=tmp_path)
    schema = DataSchema(columns=[ColumnRule(name="v", max_mean_shift=0.5, max_std_ratio=2.0)])
    same = data.validate(pa.table({"v": rng.normal(100, 10, 1000)}), schema, reference=ref.id, store=tmp_path)
    assert same.ok and [c.rule for c in same.checks] == ["mean_shift", "std_ratio"]
    moved = data.validate(pa.table({"v": rng.normal(110, 30, 1000)}), schema, reference=ref.id, store=tmp_path)
    (shift,) = failure(moved, "mean_shift")
    assert shift.startswith("column 'v': mean 1") and "reference stds from the reference mean 100" in shift
    assert shift.endswith("allowed 0.5")
    (ratio,) = failure(moved, "std_ratio")
    assert "allowed between 0.5x and 2x" in ratio
    # without a reference, the bound cannot be checked: that is a failure, not a silent pass
    alone = data.validate(pa.table({"v": [1.0]}), schema)
    assert "no reference statistics" in failure(alone, "mean_shift")[0]


def test_inferred_schema_passes_its_reference_and_catches_drift(tmp_path):
    rng = np.random.default_rng(1)
    n = 5000
    table = pa.table({"amount": rng.uniform(0, 1000, n), "country": rng.choice(["DE", "FR", "US"], n),
                      "age": rng.integers(18, 90, n)})
    path = tmp_path / "ref.parquet"
    pq.write_table(table, path)
    ref = data.snapshot(path, store=tmp_path / "s")
    schema = data.infer_schema(ref.id, store=tmp_path / "s")
    assert schema.reference == ref.id
    amount = schema.column("amount")
    assert amount.type == "double" and amount.min <= -90 and amount.max >= 1090 and amount.ref_std > 0
    assert schema.column("country").categories == ["DE", "FR", "US"]
    assert data.validate(path, schema).ok
    assert data.validate(ref.id, schema, store=tmp_path / "s").ok  # a snapshot validated by id
    # round trip through YAML and JSON files
    for name in ("schema.yaml", "schema.json"):
        data.dump_schema(schema, tmp_path / name)
        assert data.load_schema(tmp_path / name) == schema
    drifted = table.set_column(0, "amount", pa.array(rng.uniform(500, 1500, n)))
    report = data.validate(drifted, tmp_path / "schema.yaml")
    assert {c.rule for c in report.failures} == {"range", "mean_shift"}


def test_bad_schema_files_name_the_file_and_key(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("columns:\n  - name: a\n    maximum: 3\n")
    with pytest.raises(ConfigError, match=r"s\.yaml: Object contains unknown field `maximum` - at `\$\.columns\[0\]`"):
        data.load_schema(bad)
    bad.write_text("columns:\n  - name: a\n    min: 5\n    max: 1\n")
    with pytest.raises(ConfigError, match=r"columns\[0\] \('a'\): min 5.0 > max 1.0"):
        data.load_schema(bad)
    bad.write_text("columns:\n  - name: a\n    max_null_fraction: high\n")
    with pytest.raises(ConfigError,
                       match=r"Expected `float \| null`, got `str` - at `\$\.columns\[0\]\.max_null_fraction`"):
        data.load_schema(bad)
    with pytest.raises(ConfigError, match="cannot read schema file"):
        data.load_schema(tmp_path / "missing.yaml")
