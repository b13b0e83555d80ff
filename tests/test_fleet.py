"""The fleet view: three real replicas on loopback share the traffic; their drift sketches and
live accuracy are merged into one window per version, and the pipeline's trigger decides on it."""

import socket
import time

import numpy as np
import pytest
import torch

from conftest import RunningServer
from helpers_traffic import label, send
from loopserve import zoo
from loopserve.cli import main
from loopserve.fleet import FleetView, resolve_replicas
from loopserve.fleet.replicas import ReplicaSpecError
from loopserve.pipeline.config import PipelineConfig
from loopserve.pipeline.runner import Pipeline
from loopserve.pipeline.server_view import ServerUnavailable, ServerView
from loopserve.pipeline.retrain_data import complete_accuracy_windows
from loopserve.pipeline.trigger import Evidence, TriggerConfig, decide
from loopserve.server.app import LoopserveApp
from loopserve.serving.repository import ModelRepository

WIDTH = 32
PER_REPLICA = 600  # under min_rows (1000, see drift_model_root) on each replica, 1800 over it for the fleet


@pytest.fixture
def fleet(drift_model_root):
    """Three replicas, each with its own repository, monitor and feedback store, on loopback (one
    process each: the front-end processes of `--workers` are tested elsewhere)."""
    repos = [ModelRepository(drift_model_root) for _ in range(3)]
    for repo in repos:
        repo.load("mlp")
    servers = [RunningServer(LoopserveApp(repo)) for repo in repos]
    yield repos, servers
    for server in servers:
        server.stop()
    for repo in repos:
        repo.close()


def close_windows(repos):
    for repo in repos:
        monitor = repo.get("mlp").drift
        monitor.flush()
        monitor.close_window()


def test_a_drift_under_min_rows_on_every_replica_is_caught_by_the_fleet_view(fleet, tmp_path):
    repos, servers = fleet
    rng = np.random.default_rng(1)
    for server in servers:  # a calm window, then a shifted one, each spread over the three replicas
        send(server, rng.standard_normal((PER_REPLICA, WIDTH)).astype(np.float32))
    close_windows(repos)
    for server in servers:
        shifted = rng.standard_normal((PER_REPLICA, WIDTH)).astype(np.float32)
        shifted[:, 5] += 1.0
        send(server, shifted)
    close_windows(repos)

    for server in servers:  # alone, no replica has enough rows to judge
        own = ServerView(f"http://{server.url}", "mlp").drift()
        assert [w["verdict"] for w in own["windows"]] == ["insufficient data"] * 2
        assert [w["rows"] for w in own["windows"]] == [PER_REPLICA] * 2

    view = FleetView([f"http://{s.url}" for s in servers], "mlp")
    report = view.drift()
    assert [w["rows"] for w in report["windows"]] == [3 * PER_REPLICA] * 2
    assert [w["verdict"] for w in report["windows"]] == ["no drift", "drift"]
    assert "f5" in report["windows"][-1]["drifted_features"] and report["alert"] is True
    assert sorted(report["replicas"]) == sorted(f"http://{s.url}" for s in servers)
    assert not report["unreachable"]

    # The pipeline's trigger decides on the fleet's view: it fires; on one replica's view it cannot.
    config = PipelineConfig(model="mlp", train=str(tmp_path / "unused.yaml"), store=str(tmp_path / "store"),
                            triggers=TriggerConfig(drift_windows=1, cooldown_s=0))
    for view_of, fires in ((view, True), (ServerView(f"http://{servers[0].url}", "mlp"), False)):
        pipeline = Pipeline(config, view=view_of)
        try:
            decision = decide(config.triggers, pipeline.evidence())
        finally:
            pipeline.close()
        assert decision.fire is fires, decision.reasons
    assert "features: f5" in decide(config.triggers, Pipeline(config, view=view).evidence()).reasons[0]

    # `loopserve drift` prints the same fleet view, per version
    replicas = ",".join(f"http://{s.url}" for s in servers)
    assert main(["drift", "mlp", "--replicas", replicas, "--json"]) == 0


def test_live_accuracy_and_traffic_are_summed_over_replicas(fleet, capsys):
    repos, servers = fleet
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, WIDTH)).astype(np.float32)
    module = zoo.tiny_mlp()
    with torch.no_grad():
        predicted = module(torch.from_numpy(x)).numpy().argmax(axis=1)
    correct_by_replica = [100, 70, 40]  # of 100 labels each: replica k gets that many right
    for k, server in enumerate(servers):
        rows = x[100 * k:100 * (k + 1)]
        ids = send(server, rows, id_prefix=f"r{k}-", batch=1)
        truth = predicted[100 * k:100 * (k + 1)].copy()
        truth[correct_by_replica[k]:] = 1 - truth[correct_by_replica[k]:]
        label(server, ids, truth)
    view = FleetView([f"http://{s.url}" for s in servers], "mlp")
    (version,) = view.feedback()["versions"]
    assert version["replicas"] == 3 and version["cumulative"]["labels"] == 300
    assert version["cumulative"]["accuracy"] == pytest.approx(210 / 300)
    assert [w["labels"] for w in version["windows"]] == [300]  # each replica's one closed 100-label window
    # Windows of prediction time merge by their bounds, so the accuracy trigger reads the fleet as one server.
    own = [ServerView(f"http://{s.url}", "mlp").feedback()["versions"][0]["by_prediction_time"] for s in servers]
    by_time = version["by_prediction_time"]
    assert [(w["start"], w["end"]) for w in by_time] == sorted({(w["start"], w["end"]) for o in own for w in o})
    for w in by_time:
        same = [o for replica in own for o in replica if o["start"] == w["start"]]
        assert (w["labels"], w["correct"]) == (sum(o["labels"] for o in same), sum(o["correct"] for o in same))
    assert sum(w["labels"] for w in by_time) == 300 and sum(w["correct"] for w in by_time) == 210
    # The newest window holds the newest predictions, the last 60 all wrong: under 0.8 whatever the bounds.
    windows, _ = complete_accuracy_windows(view.feedback(), "1", now=time.time() + 3600, label_wait_s=0.0)
    triggers = TriggerConfig(drift_windows=None, accuracy_floor=0.9, accuracy_windows=1, min_labels=1)
    assert decide(triggers, Evidence(now=time.time(), accuracy_windows=windows)).fire
    traffic = view.traffic()
    assert traffic["metrics"]["1"]["requests"] == 300 and traffic["settled"] and traffic["weights"] == {"1": 1.0}
    assert sum(traffic["metrics"]["1"]["latency_counts"]) == 300  # every answer in one of the latency buckets
    assert main(["drift", "mlp", "--replicas", ",".join(f"http://{s.url}" for s in servers)]) == 0
    out = capsys.readouterr().out
    assert "3/3 replicas answered" in out and "live accuracy 0.700 over 300 labels (3 replicas)" in out


def test_a_replica_down_is_named_and_the_others_still_answer(fleet):
    _, servers = fleet
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    # The dead one refuses at once; the live one has 30 s to answer (a loaded machine is slow).
    view = FleetView([f"http://{servers[0].url}", dead], "mlp", timeout_s=30)
    assert view.traffic()["versions"] == [1] and list(view.unreachable) == [dead]
    with pytest.raises(ServerUnavailable, match="no replica"):
        FleetView([dead], "mlp", timeout_s=30).traffic()


def test_replicas_from_urls_and_from_dns():
    assert resolve_replicas("http://a:8000, b:9000/,http://a:8000") == ["http://a:8000", "http://b:9000"]
    assert "http://127.0.0.1:8123" in resolve_replicas(["dns://localhost:8123"])
    with pytest.raises(ReplicaSpecError, match="expected dns://NAME:PORT"):
        resolve_replicas("dns://localhost")
    with pytest.raises(ReplicaSpecError, match="cannot resolve"):
        resolve_replicas("dns://no-such-host.invalid:80")


def test_replicas_on_a_postgresql_store_follow_its_aliases_together(postgres_store_url, tmp_path):
    """The fleet's shared registry: two replicas serve registry://fraud@production from one
    PostgreSQL store (blobs in its shared directory); a promotion moves both."""
    from loopserve.registry import register_model, set_alias
    from loopserve.server.config import ServerConfig
    from loopserve.server.main import build_app
    from loopserve.serving.registry_source import ModelSource
    from loopserve.store import Store

    def register(seed, alias=None):
        model_dir = zoo.write_model_dir(tmp_path / f"build-{seed}", "fraud", zoo.tiny_mlp(seed=seed))
        with Store(postgres_store_url) as store:
            return register_model("fraud", [model_dir / "config.yaml", model_dir / "1" / "model.onnx"],
                                  alias=alias, store=store).version

    v1 = register(1, alias="production")
    config = ServerConfig(models=[ModelSource(name="fraud", source="registry://fraud@production")],
                          store=postgres_store_url, repository_poll_s=0.05)
    replicas = [RunningServer(build_app(config)) for _ in range(2)]
    try:
        view = FleetView([f"http://{r.url}" for r in replicas], "fraud")
        assert view.traffic()["weights"] == {str(v1): 1.0}
        v2 = register(2)
        with Store(postgres_store_url) as store:
            set_alias("fraud", "production", v2, store=store)
        deadline = time.monotonic() + 60
        while view.traffic()["weights"] != {str(v2): 1.0} and time.monotonic() < deadline:
            time.sleep(0.1)
        traffic = view.traffic()
        assert traffic["weights"] == {str(v2): 1.0} and traffic["settled"]  # every replica, not just one
    finally:
        for replica in replicas:
            replica.stop()
