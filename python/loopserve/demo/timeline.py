"""What the demo prints as it happens, and keeps for the report: drift windows, pipeline
steps, which versions serve with what weight, live accuracy per version. It reads what the
pipeline reads: one server (ServerView) or a fleet's merged view (FleetView)."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import urllib.error
from collections import Counter
from dataclasses import dataclass, field

from loopserve.pipeline.server_view import ServerUnavailable

log = logging.getLogger("loopserve.demo")

# What a poll may meet while the loop runs: a busy or restarting server, a half-written answer, a
# store write in progress. Looked at again next time; anything else is a bug, counted and logged.
EXPECTED = (ServerUnavailable, urllib.error.URLError, OSError, json.JSONDecodeError, sqlite3.OperationalError)


@dataclass
class Series:
    """Everything the report plots, in seconds since the demo's traffic began."""

    drift: list[dict] = field(default_factory=list)  # per closed window: end, verdict, version, psi by feature
    accuracy: dict[str, list[tuple[float, float, int]]] = field(default_factory=dict)  # version -> (t, acc, labels)
    weights: list[tuple[float, dict]] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)


class Timeline:
    def __init__(self, view, model: str, store_root, t0: float, echo=print):
        """`view`: a ServerView or FleetView of `model` (or a port on this machine: its ServerView)."""
        if isinstance(view, int):
            from loopserve.pipeline.server_view import ServerView

            view = ServerView(f"http://127.0.0.1:{view}", model)
        self.view = view
        self.model = model
        self.store_root = store_root
        self.t0 = t0  # wall clock (time.time()) when traffic began
        self.echo = echo
        self.series = Series()
        self._windows_seen: set[tuple[str, float]] = set()
        self._steps_seen: set[tuple[str, str, str]] = set()
        self.run_status: dict[str, str] = {}  # run id -> its status, as last seen
        self._weights: dict | None = None
        self.promoted_at: float | None = None
        self.first_drift_at: float | None = None
        self.poll_misses: Counter[str] = Counter()  # expected failures, by kind
        self.errors: list[str] = []  # unexpected ones

    def now(self) -> float:
        return time.time() - self.t0

    def say(self, message: str, at: float | None = None) -> None:
        t = self.now() if at is None else at
        self.series.events.append((t, message))
        self.echo(f"[{t:6.1f} s] {message}")

    def poll(self) -> None:
        for what in (self._traffic, self._drift, self._feedback, self._pipeline):
            try:
                what()
            except EXPECTED as e:
                self.poll_misses[type(e).__name__] += 1
            except Exception as e:  # noqa: BLE001  # a bug: the demo goes on, the count says so
                self.errors.append(f"{what.__name__}: {type(e).__name__}: {e}")
                log.exception("timeline poll failed", extra={"part": what.__name__})

    def _traffic(self) -> None:
        state = self.view.traffic()
        weights = {str(k): round(v, 3) for k, v in state["weights"].items()}
        if weights != self._weights:
            self._weights = weights
            self.series.weights.append((self.now(), weights))
            shares = ", ".join(f"v{v} {w:.0%}" for v, w in sorted(weights.items()))
            self.say(f"serving: {shares}")

    def _drift(self) -> None:
        report = self.view.drift(windows=3)
        for w in report["windows"]:
            key = (report["version"], w["start"])
            if key in self._windows_seen:
                continue
            self._windows_seen.add(key)
            end = w["end"] - self.t0
            psi = {f["name"]: f["psi"] for f in w["features"]}
            self.series.drift.append({"t": end, "verdict": w["verdict"], "version": report["version"], "psi": psi})
            if w["verdict"] == "drift":
                if self.first_drift_at is None:
                    self.first_drift_at = end
                top = sorted(((f["psi"], f["name"]) for f in w["features"] if f["drifted"]), reverse=True)[:4]
                self.say(f"drift window (v{report['version']}, {w['rows']} rows): DRIFT in "
                         + ", ".join(f"{n} (psi {p:.2f})" for p, n in top), at=end)

    def _feedback(self) -> None:
        report = self.view.feedback()
        for v in report["versions"]:
            cumulative = v["cumulative"]
            if cumulative["labels"] and cumulative["accuracy"] is not None:
                points = self.series.accuracy.setdefault(str(v["version"]), [])
                current = v["windows"][-1] if v["windows"] else v["current"]
                if current["accuracy"] is not None and (not points or points[-1][2] != cumulative["labels"]):
                    points.append((self.now(), current["accuracy"], cumulative["labels"]))

    def _pipeline(self) -> None:
        from loopserve.pipeline.records import PipelineRecords
        from loopserve.store import Store

        with Store(self.store_root) as store:
            runs = PipelineRecords(store).runs(self.model, limit=3)
        for run in reversed(runs):
            if run.id not in self.run_status:
                self.run_status[run.id] = "running"
                self.say(f"pipeline run {run.id} started: {run.reason}", at=run.started_at - self.t0)
            for step in run.steps:
                key = (run.id, step.step, step.status)
                if step.status in ("running",) or key in self._steps_seen:
                    continue
                self._steps_seen.add(key)
                self.say(f"  {step.step}: {step.status}{self._summary(step.detail)}",
                         at=(step.finished_at or time.time()) - self.t0)
            if run.status != "running" and self.run_status[run.id] == "running":
                self.run_status[run.id] = run.status
                self.say(f"pipeline run {run.id}: {run.status} ({run.outcome})", at=(run.finished_at or 0) - self.t0)
                if run.status == "promoted":
                    self.promoted_at = (run.finished_at or time.time()) - self.t0

    def _summary(self, detail: dict) -> str:
        if "error" in detail:
            return f" - {detail['error'][:300]}"
        if "registered_version" in detail:
            auc = detail.get("metrics", {}).get("gate_auc")
            return f" - registered v{detail['registered_version']}" + (f", holdout auc {auc:.3f}" if auc else "")
        if "rows" in detail:
            since = "" if detail.get("since") is None else \
                f" predicted after the change point at {detail['since'] - self.t0:.1f} s"
            return f" - {detail['rows']} labelled rows{since}"
        if "canary" in detail and "production" in detail:
            c, p = detail["canary"], detail["production"]
            acc = (f", accuracy {c['accuracy']:.3f} vs {p['accuracy']:.3f}"
                   if c.get("accuracy") is not None and p.get("accuracy") is not None else "")
            return f" - canary {c['requests']} requests, {c['errors']} errors{acc}"
        if "weights" in detail:
            return f" - weights {detail['weights']}"
        if "rules_checked" in detail:
            return f" - {detail['rules_checked']} rules checked"
        return ""
