"""The closed loop end to end: drift injected -> trigger -> v2 trained, gated, registered with
lineage -> canary -> promoted, with no failed request; and a worse candidate stopped by the
gates while v1 keeps serving."""

import dataclasses
import time

import msgspec

from loopserve.demo import QUICK, run_closed_loop
from loopserve.demo import setup as demo_setup
from loopserve.registry import current_version, get_version, lineage
from loopserve.store import Store

from conftest import free_port


def test_drift_triggers_a_retrain_that_is_canaried_and_promoted(tmp_path):
    # A loaded machine is slow and its latency noisy: up to 300 s to promote (it stops once v2
    # serves alone), and no canary rolled back for p99 (here a fresh canary's p99 was 5x
    # production's under load; test_rollback_rule and test_pipeline_canary judge the rule).
    sizes = dataclasses.replace(QUICK, max_seconds=300, canary_max_p99_ratio=1000)
    lines = []
    summary = run_closed_loop(tmp_path, free_port(), sizes, echo=lines.append, after_promotion_s=3)
    log = "\n".join(lines)
    assert summary["failed requests"] == 0, summary["first failures"]
    assert summary["v2 promoted (s)"] is not None, log
    assert summary["drift detected (s)"] >= summary["drift begins (s)"], log
    assert summary["server exit status"] == 0
    with Store(tmp_path / "store") as store:
        # Usually version 2; a later one when a first candidate, trained on the few rows labelled
        # by then (how many depends on the machine's pace), failed its gates and was set aside.
        promoted = current_version("fraud", "production", store=store)
        assert promoted >= 2
        new = get_version("fraud", promoted, store=store)
        assert new.parent_version == 1 and new.run_id and new.data_snapshot
        assert new.tags.get("gates") == "passed"
        trace = lineage("fraud", "production", store=store)
        assert trace.run.id == new.run_id and trace.data_snapshot == new.data_snapshot
    assert {"1", str(promoted)} <= set(summary["answered by version"])
    assert "pipeline run" in log and "promoted" in log
    assert summary["timeline errors"] == []
    assert_report_shows(tmp_path / "report.html", lines)


def assert_report_shows(path, lines):
    """The report by its content: its three plots as real PNG images, and every timeline event."""
    import base64
    import html
    import re

    text = path.read_text()
    figures = re.findall(r"<h2>([^<]+)</h2><img src='data:image/png;base64,([^']+)'>", text)
    assert [title for title, _ in figures] == ["Drift per feature over time", "Live accuracy per version",
                                               "Versions serving"]
    for title, data in figures:
        png = base64.b64decode(data)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5_000, title
    events = [re.sub(r"^\[\s*-?[\d.]+ s\] ", "", line) for line in lines if line.startswith("[")]
    assert any("DRIFT in" in e for e in events) and any("pipeline run" in e for e in events)
    for event in events:
        assert html.escape(event) in text, event


def test_a_worse_candidate_is_stopped_by_its_gates_and_v1_keeps_serving(tmp_path, serve, monkeypatch):
    from loopserve.datasets import FraudStream
    from loopserve.demo.traffic import Traffic
    from loopserve.pipeline.config import load_pipeline_config
    from loopserve.pipeline.runner import Pipeline
    from loopserve.server.config import load_server_config
    from loopserve.server.main import build_app

    sizes = QUICK
    template = demo_setup.write_train_template(tmp_path, sizes, seed=1)
    demo_setup.train_v1(template)
    # The candidate's training: barely any learning, so it ranks fraud no better than chance.
    worse = tmp_path / "train_worse.yaml"
    worse.write_text(template.read_text().replace("epochs: 3", "epochs: 1").replace("lr: 0.003", "lr: 0.0000001"))
    monkeypatch.chdir(tmp_path)  # the feedback spill directory is relative to the server's working directory
    server = serve(build_app(load_server_config(demo_setup.write_server_config(tmp_path, sizes, 0))))
    config_path = demo_setup.write_pipeline_config(tmp_path, sizes, server.port)
    config = load_pipeline_config(config_path)
    config = msgspec.structs.replace(config, train=str(worse), retrain_data=msgspec.structs.replace(
        config.retrain_data, min_rows=1500, wait_s=0))

    stream = FraudStream(seed=1, fraud_rate=sizes.fraud_rate)  # no drift: v1 is good
    batch = stream.batch(sizes.train_rows + sizes.holdout_rows, 2500)
    traffic = Traffic(server.port, "fraud", batch.features, batch.labels, batch.groups, "features",
                      rows_per_s=2000, label_delay_s=0.2)
    traffic.start()
    deadline = time.monotonic() + 300
    while traffic.labels_sent < 2500 and time.monotonic() < deadline:
        time.sleep(0.2)
    traffic.stop()
    assert traffic.failed == [] and traffic.labels_sent == 2500

    pipeline = Pipeline(config)
    try:
        record = pipeline.run("test: a deliberately worse candidate")
    finally:
        pipeline.close()
    steps = {s.step: s for s in record.steps}
    assert record.status == "stopped"
    assert steps["collect"].status == "passed" and steps["validate"].status == "passed"
    assert steps["train"].status == "failed" and "production" in steps["train"].detail["error"]
    assert [steps[s].status for s in ("canary", "compare", "promote")] == ["skipped"] * 3
    with Store(tmp_path / "store") as store:
        assert current_version("fraud", "production", store=store) == 1
    status, _, raw = server.request("GET", "/v2/models/fraud/traffic")
    assert msgspec.json.decode(raw)["weights"] == {"1": 1.0}
