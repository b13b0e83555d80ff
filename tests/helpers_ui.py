"""The demo's kind of data, made in a few seconds for the UI tests and bench/ui_*.py: a store
with two tracked runs and two registered versions (v1 production, v2 canary, with lineage), a
pipeline run with the trigger decision that started it; a server following the registry;
traffic that drifts, and its labels."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import msgspec
import numpy as np
import torch

from loopserve import zoo
from loopserve.config import DriftConfig, DriftPolicy, FeedbackConfig
from loopserve.monitor.profile import build_profile
from loopserve.pipeline.records import PipelineRecords
from loopserve.pipeline.trigger import AccuracyWindow, DriftWindow, Evidence, TriggerConfig, decide
from loopserve.registry import register_model, set_alias
from loopserve.server.config import ServerConfig
from loopserve.serving.registry_source import ModelSource
from loopserve.store import Store
from loopserve.tracking import start_run

FEATURES = ["amount", "account_age_days", "distance_km", "hour", "merchant_risk", "txn_velocity"]
TOKEN = "ui-test-token"


def small_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(len(FEATURES), 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


def reference_rows(n: int = 5000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, len(FEATURES))).astype(np.float32)


def build_store(root: Path, work: Path) -> dict:
    """Runs, versions, aliases and a pipeline record under store `root`; returns their ids."""
    ids = {"runs": [], "versions": []}
    reference = reference_rows()
    with Store(root) as store:
        for v, (lr, epochs) in enumerate([(0.003, 4), (0.001, 6)], start=1):
            snapshot = hashlib.sha256(f"snapshot-{v}".encode()).hexdigest()
            with start_run("fraud", params={"lr": lr, "epochs": epochs, "hidden": [16]}, data_snapshot=snapshot,
                           store=store) as run:
                for step in range(1, epochs + 1):
                    run.log_metrics({"loss": 0.7 / (step * v ** 0.5), "val_auc": 0.8 + 0.02 * step + 0.01 * v},
                                    step=step)
            module = small_model(v)
            model_dir = zoo.write_model_dir(work / f"build-{v}", "fraud", module, max_batch_size=256)
            with torch.no_grad():
                outputs = module(torch.from_numpy(reference)).numpy()
            build_profile(reference, FEATURES, outputs=outputs, output_names=["score0", "score1"]).save(model_dir / "1")
            version = register_model("fraud", [model_dir / "config.yaml", model_dir / "1" / "model.onnx",
                                               model_dir / "1" / "drift_profile.json"],
                                     run_id=run.id, parent_version=None if v == 1 else 1,
                                     metrics={"val_auc": 0.8 + 0.02 * epochs + 0.01 * v}, store=store)
            ids["runs"].append(run.id)
            ids["versions"].append(version.version)
        set_alias("fraud", "production", 1, reason="first model", store=store)
        set_alias("fraud", "canary", 2, reason="pipeline run: canary", actor="pipeline", store=store)
        records = PipelineRecords(store)
        now = time.time()
        decision = decide(TriggerConfig(drift_windows=2), Evidence(
            now=now - 30, drift_windows=[DriftWindow(now - 90 + 20 * i, now - 70 + 20 * i, verdict) for i, verdict
                                         in enumerate(["no drift", "drift", "drift"])], drifted_features=["amount"],
            accuracy_windows=[AccuracyWindow(now - 50, now - 40, 0.81, 400)], labels_total=900))
        records.record_decision("fraud", decision)
        run_id = records.start_run("fraud", "; ".join(decision.reasons))
        for position, (step, detail) in enumerate([("collect", {"rows": 5200}), ("validate", {"rules_checked": 14}),
                                                   ("train", {"registered_version": 2}),
                                                   ("canary", {"weights": {"1": 70, "2": 30}})]):
            records.start_step(run_id, step, position)
            records.finish_step(run_id, step, "passed", detail)
        records.start_step(run_id, "compare", 4)
        ids["pipeline_run"] = run_id
    return ids


def server_config(store_root: Path, drift: DriftConfig | None = None, feedback: FeedbackConfig | None = None,
                  **overrides) -> ServerConfig:
    """Serves registry://fraud@production with the canary alias at 30%; small windows, so a few
    hundred requests make several of each."""
    drift = drift or DriftConfig(window_rows=400, window_seconds=0, policy=DriftPolicy(min_rows=200))
    feedback = feedback or FeedbackConfig(window_labels=100, threshold=None)
    source = ModelSource(name="fraud", source="registry://fraud@production", canary_alias="canary", canary_weight=30,
                         drift=drift, feedback=feedback)
    return ServerConfig(models=[source], store=str(store_root), repository_poll_s=0.2, management_token=TOKEN,
                        **overrides)


def drive(server, requests: int = 300, rows: int = 8, shift_after: int = 150, seed: int = 1,
          version: int | None = None) -> int:
    """Sends `requests` infer requests of `rows` rows (the first feature shifted by +1.5 after
    `shift_after`: drift), to `version` or as routed, and labels for each; returns the
    requests that failed."""
    path = "/v2/models/fraud" + (f"/versions/{version}" if version else "") + "/infer"
    rng = np.random.default_rng(seed)
    failed, labels = 0, []
    for i in range(requests):
        x = rng.standard_normal((rows, len(FEATURES))).astype(np.float32)
        if i >= shift_after:
            x[:, 0] += 1.5
        body = msgspec.json.encode({"id": f"req-{seed}-{i}", "inputs": [
            {"name": zoo.INPUT, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]})
        status, _, _ = server.request("POST", path, body)
        failed += status != 200
        labels.append({"id": f"req-{seed}-{i}", "label": (x[:, 0] > 0.5).astype(int).tolist()})
    for start in range(0, len(labels), 100):
        status, _, _ = server.request("POST", "/v2/models/fraud/feedback",
                                      msgspec.json.encode({"labels": labels[start:start + 100]}),
                                      {"Authorization": f"Bearer {TOKEN}"})  # feedback needs the token
        failed += status != 200
    return failed


def headless_chromium():
    """A Selenium session on headless Chromium, or a string saying why there is none."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return "selenium is not installed (pip install -e .[dev])"
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        return "no headless Chromium: install the Debian packages chromium and chromium-driver (make test does, as root)"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(driver))  # the packaged driver: no download
