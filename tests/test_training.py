"""`loopserve train`: a small model trained from a config file through the CLI, its exports, the model
directory loopserve serves, the tracked run, the registered version, and config errors."""

import json
import warnings
from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch

from loopserve import Model
from loopserve.cli import main
from loopserve.datasets import FraudStream
from loopserve.errors import ConfigError
from loopserve.training import ExportMismatch, TrainResult, load_train_config
from loopserve.training.export import check_agreement

CONFIG = """
data:
  generator: {seed: 0, start: 0, rows: 5000}
model:
  hidden: [32, 16]
  log_features: [amount, account_age_days, distance_from_home_km, minutes_since_last_txn]
epochs: 2
batch_size: 128
output: {dir: models, name: fraud, max_batch_size: 64}
gates:
  min_auc: 0.7
  decision_threshold: 0.15
  max_demographic_parity_difference: 0.15
  max_p99_latency_ms: 1000  # loose: p99 of 50 calls is about their slowest, one stall on a loaded machine
  latency_calls: 50
holdout:
  generator: {seed: 0, start: 50000, rows: 4000}
tracking: {experiment: fraud-test}
registry: {enabled: true, alias: staging}
store: store
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One run of `loopserve train CONFIG --quiet --json` in a fresh directory."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("train")
    (root / "train.yaml").write_text(CONFIG)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["train", str(root / "train.yaml"), "--quiet", "--json"])
    assert status == 0, out.getvalue()
    return root, msgspec.json.decode(out.getvalue().strip().splitlines()[-1], type=TrainResult)


def test_model_dir_is_served_and_exports_agree(trained):
    root, result = trained
    assert result.published and result.version == 1 and result.gates_passed
    assert Path(result.model_dir) == root / "models" / "fraud"
    vdir = Path(result.version_dir)
    assert vdir == root / "models" / "fraud" / "1"
    assert {p.name for p in vdir.iterdir()} >= {"model.onnx", "model.pt", "drift_profile.json", "signature.json",
                                                "gates.json", "train_result.json"}
    assert not [p for p in Path(result.model_dir).iterdir() if p.name.startswith(".staging")]
    x = FraudStream(seed=0).batch(60_000, 300).features
    import onnxruntime as ort

    onnx_out = ort.InferenceSession(result.onnx, providers=["CPUExecutionProvider"]).run(None, {"features": x})[0]
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        ts_out = torch.jit.load(result.torchscript)(torch.from_numpy(x)).numpy()
    assert onnx_out.shape == (300, 1) and onnx_out.dtype == np.float32
    assert np.abs(onnx_out - ts_out).max() <= 1e-5
    assert ((onnx_out >= 0) & (onnx_out <= 1)).all()
    with Model.load(result.model_dir) as model:
        assert model.version == 1 and model.config.max_batch_size == 64
        assert [(t.name, t.datatype, list(t.dims)) for t in model.inputs] == [("features", "FP32", [12])]
        served = np.concatenate([model.infer_sync({"features": x[i:i + 64]})["fraud_probability"]
                                 for i in range(0, 300, 64)])
        assert np.abs(served - onnx_out).max() <= 1e-6
    assert result.metrics["export_onnx_max_abs_diff"] <= 1e-5
    assert result.metrics["export_torchscript_max_abs_diff"] <= 1e-5


def test_metrics_profile_and_signature(trained):
    from loopserve.monitor.profile import ReferenceProfile

    _, result = trained
    assert result.metrics["val_auc"] > 0.7 and result.metrics["gate_candidate_auc"] > 0.7
    assert result.rows_train == 4000 and result.rows_validation == 1000 and result.world_size == 1
    profile = ReferenceProfile.load(result.profile)
    assert profile.rows == 4000
    assert [f.name for f in profile.features] == FraudStream.feature_names
    assert type(profile.feature("country")).__name__ == "CategoricalProfile"
    assert [o.name for o in profile.outputs] == ["fraud_probability"]
    signature = json.loads(Path(result.version_dir, "signature.json").read_text())
    assert signature["categorical"] == {"merchant_category": 20, "country": 50, "device_type": 4}
    assert signature["decision_threshold"] == 0.15 and signature["group"] == "age_band"
    gates = json.loads(Path(result.gate_report).read_text())
    assert gates["passed"] and gates["candidate"] == "fraud v1 (candidate)"


def test_run_is_tracked_and_version_registered_with_lineage(trained):
    from loopserve.data import load_snapshot
    from loopserve.registry import get_version
    from loopserve.store import Store
    from loopserve.tracking import get_run

    root, result = trained
    with Store(root / "store") as store:
        run = get_run(result.run_id, store=store)
        assert run.status == "finished" and run.experiment == "fraud-test"
        assert run.params["epochs"] == 2 and run.params["config"]["data"]["generator"]["rows"] == 5000
        assert run.metrics["val_auc"] == pytest.approx(result.metrics["val_auc"])
        assert run.data_snapshot == result.data_snapshot and run.tags["gates"] == "passed"
        assert any(a.name == "model/model.onnx" for a in run.artifacts)
        assert load_snapshot(result.data_snapshot, store=store).num_rows == 5000
        version = get_version("fraud", "staging", store=store)
        assert version.version == result.registered_version == 1
        assert version.run_id == result.run_id and version.data_snapshot == result.data_snapshot
        assert {"model.onnx", "gates.json", "drift_profile.json"} <= {a.path for a in version.artifacts}
        assert version.tags["gates"] == "passed" and version.metrics["val_auc"] > 0.7


def test_next_version_and_failed_gate_sets_the_version_aside(trained, capsys):
    root, _ = trained
    strict = CONFIG.replace("min_auc: 0.7", "min_auc: 0.99").replace("registry: {enabled: true, alias: staging}",
                                                                     "registry: {enabled: true}")
    (root / "strict.yaml").write_text(strict)
    assert main(["train", str(root / "strict.yaml"), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "rejected by its gates" in out and "gate failed: auc 0." in out and "< 0.99 on 4,000 held-out rows" in out
    model_dir = root / "models" / "fraud"
    assert not (model_dir / "2").exists()  # never in the repository the server watches
    (rejected,) = (model_dir / "rejected").iterdir()
    assert rejected.name.startswith("2-") and (rejected / "gates.json").is_file()
    with Model.load(model_dir) as model:
        assert model.version == 1
    from loopserve.registry import list_versions

    assert [v.version for v in list_versions("fraud", store=_store(root))] == [1]  # not registered


def _store(root):
    from loopserve.store import Store

    return Store(root / "store")


def test_export_mismatch_is_a_clear_error():
    eager = np.array([0.1, 0.2, 0.3], np.float32)
    assert check_agreement("the ONNX export", eager, eager + 1e-7, 1e-5) == pytest.approx(1e-7, rel=0.1)
    with pytest.raises(ExportMismatch, match=r"the ONNX export disagrees with the eager model: max \|difference\| "
                                             r"0\.001 > tolerance 1e-05 on 3 held-out rows \(worst row 1"):
        check_agreement("the ONNX export", eager, eager + np.array([0, 1e-3, 0], np.float32), 1e-5)


@pytest.mark.parametrize("text,pattern", [
    ("data: {generator: {rows: 10}}\nepochs: many\n", r"Expected `int`, got `str` - at `\$.epochs`"),
    ("data: {generator: {rows: 10}}\nlearning_rate: 0.1\n", r"unknown field `learning_rate`"),
    ("data: {snapshot: abc, generator: {rows: 10}}\n", r"set exactly one of `snapshot` or `generator` - at `\$.data`"),
    ("data: {}\n", r"set exactly one .* - at `\$.data`"),
    ("data: {generator: {rows: 10}}\ngates: {min_auc: 0.8}\n", r"gates need held-out rows.* - at `\$.holdout`"),
    ("data: {generator: {rows: 10}}\ngates: {min_auc: 1.5}\nholdout: {generator: {}}\n",
     r"Expected `float` <= 1.0 - at `\$.gates.min_auc`"),
    ("data: {generator: {rows: 10}, features: [amount, is_fraud]}\n", r"cannot be a model feature - at `\$.data.features`"),
    ("data: {generator: {rows: 0}}\n", r"Expected `int` >= 1 - at `\$.data.generator.rows`"),
    ("model: {hidden: [8]}\n", r"Object missing required field `data`"),
])
def test_bad_config_names_the_key(tmp_path, text, pattern):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=pattern) as e:
        load_train_config(path)
    assert str(path) in str(e.value)


def test_data_errors_name_the_key(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("data: {generator: {rows: 50}, features: [amount, nope]}\n"
                                     "tracking: {enabled: false}\n")
    assert main(["train", str(tmp_path / "c.yaml"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "loopserve train: data.features: no column(s) ['nope'] in the data" in err


def test_paths_are_relative_to_the_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text("data: {generator: {rows: 10}}\noutput: {dir: out}\nstore: s\n")
    config = load_train_config(tmp_path / "sub" / "c.yaml")
    assert config.output.dir == str(tmp_path / "sub" / "out") and config.store == str(tmp_path / "sub" / "s")


def test_registered_version_reproduces(trained):
    """The run recorded an entrypoint, its config and a data snapshot: retraining gives the same metrics."""
    from loopserve.registry import reproduce

    root, result = trained
    with _store(root) as store:
        reproduction = reproduce("fraud", result.registered_version, force=True, tolerance=1e-6, store=store)
    assert reproduction.ok, [c for c in reproduction.metrics if not c.ok]
    assert {c.name for c in reproduction.metrics} >= {"val_auc", "val_loss", "gate_candidate_auc"}
    assert reproduction.reproduced_run.data_snapshot == result.data_snapshot
    served = sorted(p.name for p in (root / "models" / "fraud").iterdir() if p.name.isdigit())
    assert served == ["1"]  # the served repository is left alone


def test_a_snapshot_named_in_the_config_is_resolved_once(tmp_path, monkeypatch):
    """The name moves to other data while the rows are read (another process snapshots under
    it): the id recorded with the rows is the id of the rows read, not of what the name means
    a moment later. The move is made for real in the store, right after the rows are read."""
    import loopserve.data
    from loopserve.data import snapshot
    from loopserve.training.config import DataSpec
    from loopserve.training.data import load_data

    store = str(tmp_path / "store")
    rows = FraudStream(seed=5).batch(0, 300).to_columns()
    first = snapshot(rows, store=store, name="train").id
    read_rows = loopserve.data.to_numpy

    def read_then_rename(ref, store=None):
        columns = read_rows(ref, store=store)
        snapshot({k: v[:100] for k, v in rows.items()}, store=store, name="train")
        return columns

    monkeypatch.setattr(loopserve.data, "to_numpy", read_then_rename)
    data = load_data(DataSpec(snapshot="train", label="is_fraud", group="age_band"), store=store)
    assert data.snapshot_id == first and len(data) == 300
