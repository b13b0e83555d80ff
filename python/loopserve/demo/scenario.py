"""The closed loop in a chosen world, driven through the CLI as a user would run it: a
`loopserve serve` process, a `loopserve pipeline watch` process, and traffic from the fraud
stream, where the world may change at a row (the inputs shift, the fraud pattern changes, or
both) and labels come late (or stop). The tests of the loop under real conditions and
bench/loop_conditions.py run it.

    prepare(workdir, sizes)                       # v1 trained and registered as production
    outcome = run_world(workdir, World(change_at=2000, concept_drift=True,
                                       label_delay=LabelDelay(5, 0.6, 0.2)), Loop(), sizes, port)
    outcome.runs[0].reason, outcome.timeline.series.events, outcome.traffic.failed
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loopserve.datasets import FraudStream, LabelDelay
from loopserve.demo.setup import MODEL, DemoSizes, stop_processes


@dataclass(frozen=True)
class World:
    """What happens to the live stream, from row `change_at` of it (None: nothing changes)."""

    change_at: int | None = None
    data_drift: bool = False  # FraudStream's data drift: new markets, larger amounts
    concept_drift: bool = False  # FraudStream's concept drift: the fraud pattern changes, the inputs do not
    shift: tuple[tuple[str, float], ...] = ()  # (feature, factor): inputs alone move, the pattern stays
    labels_stop_at_change: bool = False  # no label ever comes for a row from change_at on
    label_delay: LabelDelay = LabelDelay(1.0)


@dataclass(frozen=True)
class Loop:
    """The server's windows, the pipeline's rules, and how long to drive it."""

    rows_per_s: float = 500.0
    drift_window_rows: int = 1000
    accuracy_window_s: float = 1.0  # feedback.window_s: live accuracy by prediction time
    triggers: dict = field(default_factory=lambda: {"drift_windows": 2, "cooldown_s": 600})
    retrain: dict = field(default_factory=lambda: {"min_rows": 2000, "max_rows": 20000, "holdout_fraction": 0.3,
                                                   "wait_s": 30})
    canary: dict = field(default_factory=lambda: {"window_s": 30, "min_requests": 200, "min_labels": 150,
                                                  "accuracy_margin": 0.01})
    poll_s: float = 0.5
    max_seconds: float = 60.0
    until: str = "promoted"  # "promoted", "run" (the first run finished) or "time" (max_seconds)


@dataclass
class Outcome:
    traffic: object  # loopserve.demo.traffic.Traffic
    timeline: object  # loopserve.demo.timeline.Timeline
    runs: list  # loopserve.pipeline.records.RunRecord, oldest first
    decisions: list[dict]  # the pipeline's trigger decisions, oldest first
    features: np.ndarray  # the live rows sent (row i of the live stream)
    onset: float | None  # when the first changed row was answered (unix seconds)
    t0: float  # when traffic began
    server_exit: int | None
    pipeline_exit: int | None


def prepare(workdir: str | Path, sizes: DemoSizes, seed: int = 0) -> Path:
    """The train template and v1 (registered as production) in `workdir`."""
    from loopserve.demo import setup

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    template = setup.write_train_template(workdir, sizes, seed)
    setup.train_v1(template)
    return workdir


def write_configs(workdir: Path, loop: Loop, sizes: DemoSizes, port: int) -> tuple[Path, Path]:
    server = {"models": [{"name": MODEL, "source": f"registry://{MODEL}@production", "canary_alias": "canary",
                          "canary_weight": sizes.canary_weight,
                          "drift": {"window_rows": loop.drift_window_rows, "window_seconds": 0},
                          "feedback": {"spill_dir": "feedback", "threshold": 0.2, "window_labels": 500,
                                       "horizon_s": 600, "window_s": loop.accuracy_window_s}}],
              "store": "store", "http": {"host": "127.0.0.1", "port": port}, "repository_poll_s": 0.5,
              "log_level": "info"}
    pipeline = {"model": MODEL, "server": f"http://127.0.0.1:{port}", "store": "store", "train": "train_fraud.yaml",
                "retrain_data": {"feedback_dir": "feedback", **loop.retrain}, "triggers": loop.triggers,
                "validation": {"range_margin": 5.0},  # the new market's larger amounts (see setup.py)
                "canary": loop.canary, "poll_s": loop.poll_s}
    paths = workdir / "server.json", workdir / "pipeline.json"
    for path, config in zip(paths, (server, pipeline)):
        path.write_text(json.dumps(config, indent=1))
    return paths


def live_rows(world: World, loop: Loop, sizes: DemoSizes, seed: int = 0):
    """The live stream's rows (after v1's) and each row's label delay, as the world makes them."""
    first = sizes.train_rows + sizes.holdout_rows
    total = int(loop.max_seconds * loop.rows_per_s) + 1000
    at = None if world.change_at is None else first + world.change_at
    stream = FraudStream(seed=seed, data_drift_at=at if world.data_drift else None,
                         concept_drift_at=at if world.concept_drift else None, fraud_rate=sizes.fraud_rate)
    batch = stream.batch(first, total)
    for name, factor in world.shift:
        batch.features[world.change_at:, batch.feature_names.index(name)] *= factor
    delays = stream.label_delays(first, total, world.label_delay)
    if world.labels_stop_at_change and world.change_at is not None:
        delays[world.change_at:] = np.inf
    return batch, delays


def run_world(workdir: str | Path, world: World, loop: Loop, sizes: DemoSizes, port: int, seed: int = 0,
              echo=lambda message: None) -> Outcome:
    """Serves v1 (see prepare), watches it with the pipeline, and sends the world's rows until
    `loop.until` or `loop.max_seconds`; every process it starts is stopped before it returns."""
    from loopserve.demo.hotswap import wait_ready
    from loopserve.demo.timeline import Timeline
    from loopserve.demo.traffic import Traffic
    from loopserve.pipeline.records import PipelineRecords
    from loopserve.store import Store

    workdir = Path(workdir).resolve()
    server_config, pipeline_config = write_configs(workdir, loop, sizes, port)
    batch, delays = live_rows(world, loop, sizes, seed)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "loopserve.cli"]
    server = pipeline = traffic = None
    try:
        server = subprocess.Popen(cli + ["serve", "--config", str(server_config)], cwd=workdir, env=env,
                                  stdout=open(workdir / "server.log", "w"), stderr=subprocess.STDOUT)
        wait_ready(port, server)
        pipeline = subprocess.Popen(cli + ["pipeline", "watch", str(pipeline_config)], cwd=workdir, env=env,
                                    stdout=open(workdir / "pipeline.log", "w"), stderr=subprocess.STDOUT)
        traffic = Traffic(port, MODEL, batch.features, batch.labels, batch.groups, "features", loop.rows_per_s, delays)
        t0 = time.time()
        timeline = Timeline(port, MODEL, workdir / "store", t0, echo=echo)
        traffic.start()
        deadline = time.monotonic() + loop.max_seconds
        said = False
        while time.monotonic() < deadline:
            time.sleep(0.25)
            if world.change_at is not None and not said and traffic.row > world.change_at:
                said = True
                timeline.say(f"the world changes at row {world.change_at} of the live stream",
                             at=world.change_at / loop.rows_per_s)
            timeline.poll()
            if loop.until == "promoted" and timeline.promoted_at is not None:
                break
            if loop.until == "run" and any(s != "running" for s in timeline.run_status.values()):
                break
            if pipeline.poll() is not None:
                timeline.say(f"the pipeline process exited with status {pipeline.returncode}")
                break
        traffic.stop()
        timeline.poll()
    finally:
        if traffic is not None:
            traffic.stop()
        stop_processes(pipeline, server)
    with Store(workdir / "store") as store:
        records = PipelineRecords(store)
        runs = records.runs(MODEL, limit=100)[::-1]
        decisions = records.decisions(MODEL, limit=100_000)[::-1]
    onset = None
    if world.change_at is not None and world.change_at < len(traffic.answered_at):
        onset = float(traffic.answered_at[world.change_at])
    return Outcome(traffic, timeline, runs, decisions, batch.features, onset, t0, server.returncode,
                   pipeline.returncode)


def stream_rows_of(snapshot_ids: list[str], features: np.ndarray, feature_names: list[str], store) -> np.ndarray:
    """The live-stream row of every row in these snapshots, found by its exact inputs (-1: none)."""
    from loopserve.data import to_numpy

    index = {row.tobytes(): i for i, row in enumerate(np.ascontiguousarray(features, np.float32))}
    found = []
    for snapshot_id in snapshot_ids:
        columns = to_numpy(snapshot_id, store=store)
        rows = np.stack([np.asarray(columns[name], np.float32) for name in feature_names], axis=1)
        found += [index.get(row.tobytes(), -1) for row in rows]
    return np.array(found, np.int64)
