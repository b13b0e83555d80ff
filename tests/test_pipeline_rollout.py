"""The roll-out's integrity, end to end: one version serving once a run ends, one live run per
model (a lease in the store, on SQLite and PostgreSQL), a dead run's canary taken back, alias
moves that never undo a move made meanwhile, accuracy compared on predictions made since the
canary started, and triggers that survive restarts. A real server on a loopback port (one
process: these are the pipeline's paths, not the server's) and real store files."""

import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time

import msgspec
import numpy as np
import pytest

from conftest import RunningServer, wait_until
from loopserve.cli import main
from loopserve.config import FeedbackConfig
from loopserve.loadgen import ClientLoops
from loopserve.pipeline import steps
from loopserve.pipeline.config import CanaryConfig, PipelineConfig, RetrainData
from loopserve.pipeline.records import PipelineRecords, RunInProgress
from loopserve.pipeline.runner import Pipeline
from loopserve.pipeline.server_view import ServerView
from loopserve.pipeline.trigger import TriggerConfig
from loopserve.registry import UnknownAlias, alias_history, current_version, set_alias
from loopserve.server.config import ServerConfig
from loopserve.server.main import build_app
from loopserve.serving.registry_source import ModelSource
from loopserve.store import Store
from test_pipeline_canary import body, register

FAST_CANARY = CanaryConfig(window_s=60, min_requests=50, min_labels=0, poll_s=0.05, max_p99_ratio=1000)
NO_TRIGGERS = TriggerConfig(drift_windows=None)


def start_server(store_root, feedback=None):
    return RunningServer(build_app(ServerConfig(
        models=[ModelSource(name="fraud", source="registry://fraud@production", canary_alias="canary",
                            canary_weight=50, feedback=feedback)],
        store=str(store_root), repository_poll_s=0.05)))


@pytest.fixture
def served(tmp_path):
    """v1 in production, v2 and v3 registered (the tiny MLP, no drift profile), a server following."""
    store_root = tmp_path / "store"
    versions = [register(store_root, tmp_path / f"v{i}", seed=i, alias="production" if i == 1 else None)
                for i in (1, 2, 3)]
    server = start_server(store_root)
    yield store_root, versions, server
    server.stop()


def weights(server) -> dict:
    return msgspec.json.decode(server.request("GET", "/v2/models/fraud/traffic")[2])["weights"]


def config_for(server, store_root, **kw) -> PipelineConfig:
    return PipelineConfig(model="fraud", train="unused: roll-outs do not train", server=server.base_url,
                          store=str(store_root), canary=kw.pop("canary", FAST_CANARY),
                          triggers=kw.pop("triggers", NO_TRIGGERS), **kw)


def test_a_promotion_clears_the_canary_so_a_registry_rollback_serves_the_old_version_alone(
        served, capsys, monkeypatch):
    store_root, (v1, v2, _), server = served
    pipeline = Pipeline(config_for(server, store_root))
    try:
        with ClientLoops(server.base_url, "/v2/models/fraud/infer", body(), clients=2):
            record = pipeline.roll_out(v2, "test")
    finally:
        pipeline.close()
    assert record.status == "promoted", record
    with Store(store_root) as store:
        last = alias_history("fraud", "canary", store=store)[-1]
        assert (last.action, last.version, last.actor) == ("delete", v2, "pipeline")
        with pytest.raises(UnknownAlias):
            current_version("fraud", "canary", store=store)

    monkeypatch.setenv("LOOPSERVE_STORE", str(store_root))
    assert main(["registry", "rollback", "fraud"]) == 0, capsys.readouterr()
    wait_until(lambda: weights(server) == {str(v1): 1.0}, f"v{v1} alone after the rollback")


def test_promote_and_roll_back_never_undo_a_production_move_made_during_the_canary(served):
    store_root, (v1, v2, v3), server = served
    config = config_for(server, store_root)
    with Store(store_root) as store:
        run_id = PipelineRecords(store).start_run("fraud", "test")
        ctx = steps.RunContext(run_id, config, store, ServerView(server.base_url, "fraud"),
                               production_version=v1, candidate=v2)
        steps.canary(ctx)
        set_alias("fraud", "production", v3, reason="a person", store=store)  # during the canary
        with pytest.raises(steps.StepFailed, match=f"not promoted: alias 'production' of model 'fraud' is version "
                                                   f"{v3} now, not version {v1} as expected"):
            steps.promote(ctx)
        detail = steps.roll_back(ctx)
        assert detail["production"] == v3
        assert current_version("fraud", "production", store=store) == v3
        with pytest.raises(UnknownAlias):
            current_version("fraud", "canary", store=store)
    assert weights(server) == {str(v3): 1.0}


def test_one_live_run_per_model_and_a_dead_runs_canary_is_taken_back(served, tmp_path):
    """A roll-out's process is killed during compare: while it lived, other starts were refused
    (and the trigger recorded why); once its lease runs out, the next check takes the run over."""
    store_root, (v1, v2, v3), server = served
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(f"model: fraud\ntrain: unused.yaml\nserver: {server.base_url}\nstore: {store_root}\n"
                           "nice: 0\nlease_s: 5\ncanary: {window_s: 600, min_requests: 100000, min_labels: 0, "
                           "poll_s: 0.1}\ntriggers: {drift_windows: null}\n")
    with ClientLoops(server.base_url, "/v2/models/fraud/infer", body(), clients=2):
        process = subprocess.Popen([sys.executable, "-m", "loopserve.cli", "pipeline", "rollout", str(config_file),
                                    str(v2)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            with Store(store_root) as store:
                records = PipelineRecords(store)

                def comparing():
                    runs = records.runs("fraud")
                    return bool(runs) and any(s.step == "compare" and s.status == "running" for s in runs[0].steps)

                wait_until(comparing, "the roll-out's compare step", timeout=120)
                dead = records.runs("fraud")[0].id
                # While it lives: a roll-out, and a trigger that fires, are refused.
                other = Pipeline(config_for(server, store_root, triggers=TriggerConfig()))  # drift_windows: 2
                scheduled = Pipeline(config_for(server, store_root, triggers=TriggerConfig(
                    drift_windows=None, schedule_s=0.001, cooldown_s=0)))
                try:
                    with pytest.raises(RunInProgress, match=f"run {dead} of model 'fraud' is in progress"):
                        other.roll_out(v3, "test")
                    decision = scheduled.check()
                    assert not decision.fire and decision.reasons[0].startswith(f"refused: run {dead}"), decision
                    recorded = records.decisions("fraud", limit=1)[0]
                    assert recorded["reasons"] == decision.reasons
                    assert weights(server) == {str(v1): 0.5, str(v2): 0.5}

                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    wait_until(lambda: records.store.db.execute(
                        "SELECT expires_at FROM pipeline_leases WHERE model = 'fraud'").fetchone()[0] < time.time(),
                        "the dead run's lease to run out", timeout=60)
                    # The next check takes the run over (its drift rule reads a model without a
                    # drift monitor: 404, no drift evidence, no rule holds).
                    assert other.check().reasons == ["no rule holds"]
                finally:
                    other.close()
                    scheduled.close()
                run = records.run(dead)
                assert run.status == "failed" and run.outcome.startswith("abandoned"), run
                assert {s.step: s.status for s in run.steps}["compare"] == "failed"
                with pytest.raises(UnknownAlias):
                    current_version("fraud", "canary", store=store)
                assert current_version("fraud", "production", store=store) == v1
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        wait_until(lambda: weights(server) == {str(v1): 1.0}, f"v{v1} alone")


def test_the_run_lease_on_each_store(store_location):
    """The lease's rules on SQLite and PostgreSQL: one live holder, released at the end of the run,
    an expired holder's runs taken over (once), a lost lease not renewed."""
    with Store(store_location) as store:
        records = PipelineRecords(store)
        first = records.start_run("fraud", "a")
        with pytest.raises(RunInProgress, match=f"run {first} of model 'fraud' is in progress"):
            records.start_run("fraud", "b")
        records.start_run("other", "another model is not held back")
        assert records.take_over("fraud", 60) is None  # a live lease: nothing to take over
        records.finish_run(first, "promoted", "v2")
        dead = records.start_run("fraud", "c", lease_s=0)  # a lease already run out: its process died
        assert records.renew("fraud", dead, 60)
        records.start_step(dead, "compare", 4)
        store.db.execute("UPDATE pipeline_leases SET expires_at = 0 WHERE model = 'fraud'")
        recovery, runs = records.take_over("fraud", 60)
        assert runs == [dead] and records.take_over("fraud", 60) is None
        with pytest.raises(RunInProgress):
            records.start_run("fraud", "d")
        assert not records.renew("fraud", dead, 60)  # its lease is gone
        records.finish_run(dead, "failed", "abandoned")
        assert records.run(dead).steps[0].status == "failed"
        records.release("fraud", recovery)
        records.finish_run(records.start_run("fraud", "e"), "stopped", "x")


class ReadingSignalled(ServerView):
    """The server view, saying when compare has read the feedback once (its starting point)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read_feedback = threading.Event()

    def feedback(self) -> dict:
        report = super().feedback()
        self.read_feedback.set()
        return report


def test_compare_judges_accuracy_on_predictions_made_since_the_canary_started(tmp_path):
    """Production's earlier predictions were right and get their labels late, during the canary;
    on the predictions made during the canary both versions are always wrong: a tie, not a loss."""
    store_root = tmp_path / "store"
    v1 = register(store_root, tmp_path / "v1", seed=1, alias="production")
    v2 = register(store_root, tmp_path / "v2", seed=2)
    server = start_server(store_root, feedback=FeedbackConfig(threshold=None, window_s=1.0))
    try:
        def infer(request_id):
            payload = msgspec.json.decode(body())
            status, _, raw = server.request("POST", "/v2/models/fraud/infer",
                                            msgspec.json.encode(payload | {"id": request_id}))
            assert status == 200, raw
            return request_id, int(np.argmax(msgspec.json.decode(raw)["outputs"][0]["data"]))

        def label(items):
            status, _, raw = server.request("POST", "/v2/models/fraud/feedback", msgspec.json.encode(
                {"labels": [{"id": i, "label": y} for i, y in items]}))
            assert status == 200, raw

        old = [infer(f"old{i}") for i in range(60)]  # production alone, before the canary
        config = config_for(server, store_root, canary=CanaryConfig(
            window_s=300, min_requests=20, min_labels=20, poll_s=0.05, max_p99_ratio=1000, accuracy_margin=0.02))
        with Store(store_root) as store:
            run_id = PipelineRecords(store).start_run("fraud", "test")
            ctx = steps.RunContext(run_id, config, store, ReadingSignalled(server.base_url, "fraud"),
                                   production_version=v1, candidate=v2)
            steps.canary(ctx)
            with ClientLoops(server.base_url, "/v2/models/fraud/infer", body(), clients=2):  # unlabelled traffic
                with concurrent.futures.ThreadPoolExecutor(1) as pool:
                    comparing = pool.submit(steps.compare, ctx)
                    assert ctx.view.read_feedback.wait(60), "compare never read the feedback"
                    label(old)  # late labels, during the comparison: production was right back then
                    wait_until(lambda: time.time() >= np.floor(ctx.canary_since) + 1, "the next prediction-time window")
                    new = [infer(f"new{i}") for i in range(120)]
                    label([(i, 1 - y) for i, y in new])  # both versions wrong on every prediction since
                    facts = comparing.result(timeout=300)
        assert facts["production"]["accuracy"] == 0.0 and facts["canary"]["accuracy"] == 0.0, facts
        assert facts["production"]["labels"] + facts["canary"]["labels"] == 120
    finally:
        server.stop()


def test_new_labels_are_counted_across_pipeline_and_server_restarts(tmp_path):
    store_root = tmp_path / "store"
    register(store_root, tmp_path / "v1", seed=1, alias="production")

    def labelled(server, prefix, n):
        for i in range(n):
            assert server.request("POST", "/v2/models/fraud/infer", msgspec.json.encode(
                msgspec.json.decode(body()) | {"id": f"{prefix}{i}"}))[0] == 200
        assert server.request("POST", "/v2/models/fraud/feedback", msgspec.json.encode(
            {"labels": [{"id": f"{prefix}{i}", "label": 1} for i in range(n)]}))[0] == 200

    def check(server):
        # a run that fires stops at once at collect (no signature): the count is what is judged
        pipeline = Pipeline(config_for(server, store_root, triggers=TriggerConfig(
            drift_windows=None, new_labels=20, cooldown_s=0), retrain_data=RetrainData(wait_s=0)))
        try:
            return pipeline.check()
        finally:
            pipeline.close()

    server = start_server(store_root, feedback=FeedbackConfig())
    try:
        labelled(server, "a", 25)
        assert check(server).fire
        restarted = check(server)  # the pipeline restarted: no label since
        assert not restarted.fire and restarted.evidence.labels_at_last_run == 25, restarted
    finally:
        server.stop()
    server = start_server(store_root, feedback=FeedbackConfig())  # the server restarted: its count from 0
    try:
        labelled(server, "b", 24)
        decision = check(server)
        assert decision.fire and decision.reasons == ["24 new labels >= 20"], decision
    finally:
        server.stop()


def test_watch_goes_on_when_a_fleets_name_does_not_resolve(tmp_path, caplog):
    pipeline = Pipeline(PipelineConfig(model="fraud", train="unused", replicas=["dns://no-such-replica.invalid:8000"],
                                       store=str(tmp_path / "store"), poll_s=0.05))
    try:
        with caplog.at_level("WARNING", logger="loopserve.pipeline"):
            pipeline.watch(until=time.time() + 0.2)
    finally:
        pipeline.close()
    assert any("cannot resolve 'no-such-replica.invalid'" in getattr(r, "reason", "") for r in caplog.records)
