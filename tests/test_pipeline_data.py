"""The pipeline's data steps on a real v1 (trained, registered as production with its data
lineage) and a real store: collect from the feedback spill, validate, and the groups the
fairness gates compare."""

import json
import time

import msgspec
import numpy as np
import pytest

from conftest import RunningServer, wait_until
from loopserve.datasets import FraudStream
from loopserve.demo import setup as demo
from loopserve.pipeline import steps
from loopserve.pipeline.config import load_pipeline_config
from loopserve.pipeline.retrain_data import read_labelled_examples
from loopserve.store import Store

SIZES = demo.DemoSizes(train_rows=6000, holdout_rows=2000, epochs=2, max_p99_latency_ms=1000)


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline-data")
    demo.train_v1(demo.write_train_template(work, SIZES, seed=0, store=str(work / "store")))
    return work


def run_context(work, run_id, feedback_dir):
    config = load_pipeline_config(demo.write_pipeline_config(work, SIZES, port=1, store=str(work / "store")))
    config = msgspec.structs.replace(config, retrain_data=msgspec.structs.replace(
        config.retrain_data, feedback_dir=str(feedback_dir), min_rows=20, wait_s=0))
    return steps.RunContext(run_id, config, Store(str(work / "store")), view=None)


def test_validate_checks_the_held_out_rows_too(v1, tmp_path):
    """The newest rows (the holdout the gates judge on) come from a feed that broke lately:
    `amount` a million times too large. The training rows are fine; validate must still fail."""
    n = 1000
    rows = FraudStream(seed=0, fraud_rate=SIZES.fraud_rate).batch(20_000, n)
    x = np.asarray(rows.features, np.float32).copy()
    x[int(n * 0.7):, rows.feature_names.index("amount")] *= 1e6  # exactly the held-out 30%
    spill = tmp_path / "feedback" / "fraud"
    spill.mkdir(parents=True)
    t0 = time.time() - 3600
    with open(spill / "labels-000001.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"r{i}", "model": "fraud", "version": 1, "predicted_at": t0 + i,
                                "labelled_at": t0 + i + 1, "group": int(rows.groups[i]),
                                "label": [int(rows.labels[i])], "x": [x[i].tolist()], "prediction": [[0.1]]}) + "\n")
    ctx = run_context(v1, "broken-holdout", tmp_path / "feedback")
    try:
        assert steps.collect(ctx)["holdout_rows"] == 300
        with pytest.raises(steps.StepFailed, match=r"the new data failed validation: holdout amount: ") as failed:
            steps.validate(ctx)
        assert not any(f.startswith("train ") for f in failed.value.detail["failures"])
        # The same feed before it broke passes both parts.
        ctx.holdout_snapshot = ctx.train_snapshot
        assert steps.validate(ctx)["holdout_rules_checked"] > 0
    finally:
        ctx.store.close()


def test_groups_sent_as_text_are_collected_validated_and_compared_by_name(v1, tmp_path):
    """Requests name their group as text (`parameters: {group: "A"}`) or not at all, through a
    real server spilling its labelled rows: collect keeps the names, validate passes, and the
    gates compare groups "A" and "B", the rows without a group in neither."""
    from loopserve.config import FeedbackConfig
    from loopserve.server.config import ServerConfig
    from loopserve.server.main import build_app
    from loopserve.serving.registry_source import ModelSource
    from loopserve.training import GateConfig, evaluate_gates
    from loopserve.training.config import DataSpec
    from loopserve.training.data import load_data

    feedback = tmp_path / "feedback"
    server = RunningServer(build_app(ServerConfig(models=[ModelSource(
        name="fraud", source="registry://fraud@production",
        feedback=FeedbackConfig(threshold=None, spill_dir=str(feedback)))], store=str(v1 / "store"))))
    rows = FraudStream(seed=0, fraud_rate=SIZES.fraud_rate).batch(30_000, 300)
    groups = ["A", "B", None]
    try:
        for i in range(len(rows.labels)):
            body = {"id": f"r{i}", "inputs": [{"name": "features", "shape": [1, rows.features.shape[1]],
                                               "datatype": "FP32", "data": np.asarray(rows.features[i]).tolist()}]}
            if groups[i % 3] is not None:
                body["parameters"] = {"group": groups[i % 3]}
            status, _, raw = server.request("POST", "/v2/models/fraud/infer", msgspec.json.encode(body))
            assert status == 200, raw
        status, _, raw = server.request("POST", "/v2/models/fraud/feedback", json.dumps({"labels": [
            {"id": f"r{i}", "label": int(y)} for i, y in enumerate(rows.labels)]}).encode())
        assert status == 200, raw
        wait_until(lambda: len(read_labelled_examples(str(feedback), "fraud", 1000).labels) == 300,
                   "the server spilled every labelled row")
    finally:
        server.stop()
    ctx = run_context(v1, "text-groups", feedback)
    try:
        steps.collect(ctx)
        steps.validate(ctx)
        sig = ctx.signature
        holdout = load_data(DataSpec(snapshot=ctx.holdout_snapshot, features=list(sig.feature_names),
                                     label=sig.label, group=sig.group, categorical=dict(sig.categorical)),
                            store=ctx.store)
    finally:
        ctx.store.close()
    assert holdout.group_names == ["A", "B"] and sorted(set(holdout.groups.tolist())) == [-1, 0, 1]
    report = evaluate_gates(ctx.production_dir, holdout, GateConfig(max_demographic_parity_difference=1.0))
    assert [(g.name, g.rows) for g in report.groups] == [("A", 30), ("B", 30)]
    assert report.passed, report.summary()
