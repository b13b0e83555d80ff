"""`loopserve demo`: the closed loop on a synthetic fraud stream, end to end.

Trains v1 and registers it as production; serves registry://fraud@production; drives the
stream's rows at the server and sends their labels back; at a set row the world drifts (new
markets, a new fraud pattern); the drift monitor sees it, the pipeline (its own process)
retrains on the labelled rows since, gates, canaries and promotes v2; the demo prints the
timeline as it happens and writes an HTML report. `loopserve demo --replicas 3` runs it as a
fleet (loopserve.demo.fleet). `loopserve demo --hotswap` runs the older, serving-only demo.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from loopserve.demo.setup import MODEL, DemoSizes

# How long the demo keeps going once v2 is promoted: long enough for v2's drift windows to go
# quiet and its live accuracy to come back up, in the UI and in the report.
AFTER_PROMOTION_S = 20.0

QUICK = DemoSizes(train_rows=12_000, holdout_rows=4_000, epochs=3, drift_at=3_000, window_rows=1_000,
                  retrain_min_rows=5_000, canary_min_requests=250, canary_min_labels=250, rows_per_s=400.0,
                  max_seconds=100.0, max_p99_latency_ms=250.0)  # a bound a loaded 2-core test machine keeps


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_closed_loop(workdir: str | Path, port: int = 8000, sizes: DemoSizes = DemoSizes(), seed: int = 0,
                    echo=print, after_promotion_s: float = AFTER_PROMOTION_S, replicas: int = 1) -> dict:
    """Runs the demo; returns its summary (also written into the report). `replicas` > 1: a fleet
    of that many servers on port, port+1, ... (see loopserve.demo.fleet)."""
    from loopserve.demo.fleet import SharedStore

    workdir = Path(workdir).resolve()
    for stale in ("store", "models", "feedback", "pipeline-work"):
        shutil.rmtree(workdir / stale, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    with SharedStore(workdir, replicas, echo) as store:
        return _run(workdir, port, sizes, seed, echo, after_promotion_s, replicas, store)


def _start(argv: list[str], workdir: Path, log_name: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "loopserve.cli", *argv], cwd=workdir, env=env,
                            stdout=open(workdir / log_name, "w"), stderr=subprocess.STDOUT)


def _run(workdir: Path, port: int, sizes: DemoSizes, seed: int, echo, after_promotion_s: float, replicas: int,
         store) -> dict:
    from loopserve.datasets import FraudStream, LabelDelay
    from loopserve.demo import fleet, setup
    from loopserve.demo.hotswap import wait_ready
    from loopserve.demo.report import write_report
    from loopserve.demo.timeline import Timeline
    from loopserve.demo.traffic import Traffic

    started = time.monotonic()
    template = setup.write_train_template(workdir, sizes, seed, store.location)
    echo(f"training v1 on rows 0..{sizes.train_rows - 1} of the fraud stream (gated on the next "
         f"{sizes.holdout_rows:,}) ...")
    v1 = setup.train_v1(template)
    echo(f"v1 registered as production: validation auc {v1.metrics.get('val_auc', float('nan')):.3f}, "
         f"run {v1.run_id}, data snapshot {str(v1.data_snapshot)[:12]}")

    members = fleet.replicas_of(port, replicas)
    fleet_urls = fleet.urls(members) if replicas > 1 else None
    configs = [setup.write_server_config(workdir, sizes, port, store.location, r) for r in members]
    pipeline_config = setup.write_pipeline_config(workdir, sizes, port, store.location, fleet_urls,
                                                  fleet.SPILL_GLOB if fleet_urls else "feedback")
    servers = [_start(["serve", "--config", str(c)], workdir, c.with_suffix(".log").name) for c in configs]
    pipeline = traffic = None
    alone_at_first_drift: dict = {}
    try:
        for r, server in zip(members, servers):
            wait_ready(r.port, server)
        echo(f"watch it live: http://127.0.0.1:{port}/ui/ (models, drift, accuracy, registry, runs, pipeline"
             + (f"; replica 1 of {replicas})" if replicas > 1 else ")"))
        pipeline = _start(["pipeline", "watch", str(pipeline_config)], workdir, "pipeline.log")
        # The live stream starts where v1's data ended; it drifts `drift_at` rows in.
        first = sizes.train_rows + sizes.holdout_rows
        total = int(sizes.max_seconds * sizes.rows_per_s)
        stream = FraudStream(seed=seed, data_drift_at=first + sizes.drift_at, concept_drift_at=first + sizes.drift_at,
                             fraud_rate=sizes.fraud_rate)
        batch = stream.batch(first, total)
        delays = stream.label_delays(first, total, LabelDelay(sizes.label_delay_s, sizes.label_delay_sigma,
                                                              sizes.labels_never))
        traffic = Traffic([r.port for r in members], MODEL, batch.features, batch.labels, batch.groups, "features",
                          sizes.rows_per_s, delays)
        t0 = time.time()
        timeline = Timeline(fleet.view_of(members), MODEL, store.path, t0, echo=echo)
        where = (f"on http://127.0.0.1:{port}; pipeline watching" if replicas == 1 else
                 f"on {replicas} replicas (ports {members[0].port}..{members[-1].port}, the traffic spread over them); "
                 f"pipeline watching the fleet's merged drift and accuracy")
        echo(f"serving registry://{MODEL}@production {where} (logs in {workdir}); "
             f"sending {sizes.rows_per_s:.0f} rows/s, labels {sizes.label_delay_s:.0f} s later")
        traffic.start()
        drift_logged = False
        deadline = time.monotonic() + sizes.max_seconds
        while time.monotonic() < deadline and timeline.promoted_at is None:
            time.sleep(0.5)
            if not drift_logged and traffic.row >= sizes.drift_at:
                drift_logged = True
                drift_t = sizes.drift_at / sizes.rows_per_s
                timeline.say("the world drifts: a new market opens, amounts grow, fraud changes pattern "
                             f"(row {sizes.drift_at} of the live stream)", at=drift_t)
            timeline.poll()
            if replicas > 1 and timeline.first_drift_at is not None and not alone_at_first_drift:
                alone_at_first_drift = fleet.verdicts_alone(members)
                timeline.say("each replica alone, on its own newest windows: " + "; ".join(
                    f"{url.rsplit(':', 1)[1]}: {', '.join(v)}" for url, v in alone_at_first_drift.items()))
            if pipeline.poll() is not None:
                timeline.say(f"the pipeline process exited with status {pipeline.returncode}")
                break
        if timeline.promoted_at is not None:
            timeline.say(f"v2 serves alone{' on every replica' if replicas > 1 else ''}: {after_promotion_s:.0f} s "
                         "more, to watch drift go quiet and accuracy recover")
            until = time.monotonic() + after_promotion_s
            while time.monotonic() < until:
                time.sleep(0.5)
                timeline.poll()
        time.sleep(2 * sizes.label_delay_s)  # the last labels
        traffic.stop()
        timeline.poll()
        serving_at_end = fleet.serving(members)
    finally:
        if traffic is not None:
            traffic.stop()
        setup.stop_processes(pipeline, *servers)
    server_codes = [s.returncode for s in servers]

    drift_t = sizes.drift_at / sizes.rows_per_s
    summary = {
        "replicas": replicas, "store": store.kind,
        "requests": traffic.sent, "failed requests": len(traffic.failed),
        "answered by version": dict(sorted(traffic.by_version.items())),
        "labels sent": traffic.labels_sent, "label answers": dict(traffic.label_answers),
        "drift begins (s)": round(drift_t, 1),
        "drift detected (s)": None if timeline.first_drift_at is None else round(timeline.first_drift_at, 1),
        "v2 promoted (s)": None if timeline.promoted_at is None else round(timeline.promoted_at, 1),
        "drift onset to promoted v2 (s)": None if timeline.promoted_at is None
        else round(timeline.promoted_at - drift_t, 1),
        "serving at the end": serving_at_end,
        "server exit status": next((c for c in server_codes if c != 0), 0), "seconds": round(time.monotonic() - started, 1),
        "timeline errors": timeline.errors,
    }
    if replicas > 1:
        summary["answered by replica"] = {f"http://127.0.0.1:{p}": dict(sorted(c.items()))
                                          for p, c in traffic.by_replica.items()}
        summary["each replica alone at the fleet's first drift"] = alone_at_first_drift
    summary |= fleet.outcome_from_store(store.path, batch.features, batch.feature_names, members)
    report = write_report(workdir / "report.html", timeline.series, summary, drift_t, timeline.promoted_at)
    summary["report"] = str(report)
    summary["first failures"] = traffic.failed[:3]
    return summary


def run_demo(workdir: str, port: int = 8000, quick: bool = False, replicas: int = 1) -> int:
    sizes = QUICK if quick else DemoSizes()
    summary = run_closed_loop(workdir, port, sizes, echo=_say, replicas=replicas)
    _say("summary:")
    for key, value in summary.items():
        print(f"    {key}: {value}")
    ok = summary["failed requests"] == 0 and summary["v2 promoted (s)"] is not None and summary["server exit status"] == 0
    fleet = f" on all {replicas} replicas" if replicas > 1 else ""
    _say(f"the loop closed: drift detected, v2 trained, gated, canaried and promoted{fleet}, no request failed" if ok
         else "the loop did not close: see the summary and the logs in the work directory")
    return 0 if ok else 1
