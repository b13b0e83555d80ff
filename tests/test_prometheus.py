"""Prometheus and Grafana: a real Prometheus scrapes a running loopserve (and the pipeline's
metrics) under a little traffic, with drift and an accuracy drop; every PromQL expression of the
Grafana dashboard and of the alert rules must return data, and `promtool check rules` must pass."""

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import RunningServer, free_port
from helpers_traffic import label, send
from loopserve import zoo
from loopserve.pipeline.metrics import serve_metrics
from loopserve.pipeline.records import PipelineRecords
from loopserve.pipeline.trigger import DriftWindow, Evidence, TriggerConfig, decide
from loopserve.server.app import LoopserveApp
from loopserve.serving.repository import ModelRepository
from loopserve.store import Store

MONITORING = Path(__file__).resolve().parent.parent / "deploy" / "k8s" / "base" / "monitoring"
DASHBOARD = MONITORING / "loopserve-dashboard.json"
RULES = MONITORING / "loopserve-rules.yml"
# Grafana's variables, as a dashboard with every model selected expands them
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$model": ".*"}


def prometheus_binary(name="prometheus"):
    return shutil.which(name)


needs_prometheus = pytest.mark.skipif(prometheus_binary() is None, reason="the prometheus binary is not installed "
                                      "(`make setup` installs the Debian package `prometheus`)")


def dashboard_expressions():
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]


def rule_expressions():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(r["alert"], r["expr"]) for g in groups for r in g["rules"]]


def test_the_dashboard_covers_what_an_operator_watches():
    titles = " ".join(t for t, _ in dashboard_expressions()).lower()
    for topic in ("throughput", "latency", "queue", "batch", "drift per feature", "live accuracy", "traffic weights",
                  "pipeline runs"):
        assert topic in titles
    exprs = " ".join(e for _, e in dashboard_expressions())
    for metric in ("nv_inference_request_success_total", "nv_inference_queue_duration_us_total",
                   "loopserve_batch_size_bucket", "loopserve_request_duration_seconds_bucket"):
        assert metric in exprs


def test_the_pipeline_exports_what_goes_down_as_gauges_and_runs_started_as_a_counter(tmp_path):
    """A run leaves "running" when it ends, and old decisions are pruned: as counters, each drop
    would read as a counter reset. Runs started only grow."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from loopserve.pipeline.metrics import PipelineCollector

    registry = CollectorRegistry()
    registry.register(PipelineCollector(str(tmp_path)))

    def scrape():
        families = text_string_to_metric_families(generate_latest(registry).decode())
        return {f.name: (f.type, {tuple(sorted(s.labels.items())): s.value for s in f.samples}) for f in families}

    with Store(tmp_path) as store:
        records = PipelineRecords(store)
        run = records.start_run("fraud", "test")
        during = scrape()
        records.finish_run(run, "promoted", "version 2")
    after = scrape()
    running = (("model", "fraud"), ("status", "running"))
    assert during["loopserve_pipeline_runs"] == ("gauge", {running: 1.0})
    assert after["loopserve_pipeline_runs"] == ("gauge", {running: 0.0, (("model", "fraud"), ("status", "promoted")): 1.0})
    assert after["loopserve_pipeline_decisions"][0] == "gauge"
    for scraped in (during, after):  # the parser names a counter without its _total
        assert scraped["loopserve_pipeline_runs_started"] == ("counter", {(("model", "fraud"),): 1.0})


@pytest.mark.skipif(prometheus_binary("promtool") is None, reason="promtool is not installed (Debian `prometheus`)")
def test_promtool_accepts_the_alert_rules():
    result = subprocess.run([prometheus_binary("promtool"), "check", "rules", str(RULES)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_expressions())} rules found" in result.stdout


class Prometheus:
    def __init__(self, tmp_path, targets: dict[str, str]):
        self.port = free_port()
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": [str(RULES)],
                  "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                                     for job, target in targets.items()]}
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(tmp_path / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [prometheus_binary(), f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.log_path = tmp_path / "prometheus.log"

    def query(self, expr):
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for(self, expr, deadline_s=60):
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            try:
                if self.query(expr):
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"{expr} returned nothing in {deadline_s} s; log:\n{self.log_path.read_text()[-3000:]}")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


@needs_prometheus
def test_every_dashboard_and_alert_expression_returns_data_from_a_real_prometheus(drift_model_root, tmp_path):
    repo = ModelRepository(drift_model_root)
    repo.load("mlp")
    server = RunningServer(LoopserveApp(repo))
    with Store(tmp_path / "store") as store:  # a pipeline that ran once
        records = PipelineRecords(store)
        now = time.time()
        evidence = Evidence(now, drift_windows=[DriftWindow(now - 10, now, "drift")])
        records.record_decision("mlp", decide(TriggerConfig(drift_windows=1), evidence))
        records.finish_run(records.start_run("mlp", "drift in the last window"), "promoted", "version 2")
    pipeline_metrics = serve_metrics(str(tmp_path / "store"), free_port(), host="127.0.0.1")
    stop = threading.Event()
    rng = np.random.default_rng(3)

    def traffic():  # a trickle of requests while Prometheus scrapes, so rates and quantiles have data
        while not stop.is_set():
            send(server, rng.standard_normal((32, 32)).astype(np.float32), batch=8)
            time.sleep(0.05)

    prometheus = Prometheus(tmp_path, {"loopserve": server.url,
                                       "pipeline": f"127.0.0.1:{pipeline_metrics.server_port}"})
    thread = threading.Thread(target=traffic, daemon=True)
    try:
        # a calm window, then a drifted one (f5 shifted): the drift alert's expression has data
        monitor = repo.get("mlp").drift
        for shift in (0.0, 1.0):
            x = rng.standard_normal((1500, 32)).astype(np.float32)
            x[:, 5] += shift
            send(server, x, batch=250)
            monitor.flush()
            monitor.close_window()
        # labels: a window all right, then one 40% right (accuracy below the floor and dropping)
        x = rng.standard_normal((200, 32)).astype(np.float32)
        ids = send(server, x, id_prefix="p", batch=1)
        predicted = zoo.tiny_mlp()(torch.from_numpy(x)).detach().numpy().argmax(axis=1)
        truth = predicted.copy()
        truth[140:] = 1 - truth[140:]
        label(server, ids, truth)
        thread.start()
        prometheus.wait_for('count_over_time(up{job="loopserve"}[1m]) >= 3')  # three scrapes: rates have 2 points
        prometheus.wait_for('count_over_time(up{job="pipeline"}[1m]) >= 2')
        # Each expression is polled until it returns data (a loaded machine scrapes and evaluates
        # late); one that never does fails the test when the shared deadline passes.
        pending = {f"{where}: {expr}": expr for where, expr in dashboard_expressions() + rule_expressions()}
        deadline = time.monotonic() + 90
        while pending and time.monotonic() < deadline:
            for key, expr in list(pending.items()):
                query = expr
                for variable, value in GRAFANA_VARIABLES.items():
                    query = query.replace(variable, value)
                if prometheus.query(query):
                    del pending[key]
            time.sleep(0.5)
        assert not pending, "expressions without data:\n" + "\n".join(pending)
        alerting = {"LoopserveDrift", "LoopserveAccuracyBelowFloor", "LoopserveAccuracyDrop"}
        deadline = time.monotonic() + 60
        while True:  # the rules are evaluated every second: wait for the evaluation after the data
            rules = json.load(urllib.request.urlopen(f"http://127.0.0.1:{prometheus.port}/api/v1/rules", timeout=10))
            loaded = [r for g in rules["data"]["groups"] for r in g["rules"]]
            active = {r["name"] for r in loaded if r["state"] in ("pending", "firing")}
            if active >= alerting or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert len(loaded) == len(rule_expressions()) and all(r["health"] == "ok" for r in loaded)
        assert active == alerting
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(30)
        prometheus.stop()
        pipeline_metrics.shutdown()
        pipeline_metrics.server_close()
        server.stop()
        repo.close()
