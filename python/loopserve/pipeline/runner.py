"""Runs the continuous-training pipeline, once (`run`) or whenever a trigger fires (`watch`).

It runs in its own process, never in the server's: it reads the server over HTTP, writes the
registry, and the server follows the registry's aliases. Every step and every trigger decision
is recorded in the store (see records.py), and logged as a JSON line.
"""

from __future__ import annotations

import logging
import time

from loopserve.pipeline import steps
from loopserve.pipeline.config import PipelineConfig
from loopserve.pipeline.records import PipelineRecords, RunRecord
from loopserve.pipeline.server_view import ServerUnavailable, ServerView
from loopserve.pipeline.trigger import Decision, Evidence, decide

log = logging.getLogger("loopserve.pipeline")

# (name, step); after "compare" either "promote" or "rollback" runs.
STEPS = (("collect", steps.collect), ("validate", steps.validate), ("train", steps.train),
         ("canary", steps.canary), ("compare", steps.compare))


def yield_to_serving(config: PipelineConfig) -> None:
    """Lowers this process's CPU priority and torch's threads (see PipelineConfig.nice): a
    process-wide setting, so the CLI applies it to the pipeline's own process."""
    import os

    import torch

    os.nice(config.nice)
    torch.set_num_threads(config.train_threads or max(1, (os.cpu_count() or 2) // 2))


def _with_alerts(outcome: str, ctx: steps.RunContext) -> str:
    return "; ".join([outcome, *ctx.alerts])


class Pipeline:
    """Not thread-safe: one pipeline per process (it holds one store connection)."""

    def __init__(self, config: PipelineConfig, view: ServerView | None = None):
        from loopserve.store import Store

        self.config = config
        self.store = Store(config.store)
        self.records = PipelineRecords(self.store)
        self.view = view or self._view(config)
        self._labels_at_last_run = 0

    @staticmethod
    def _view(config: PipelineConfig):
        if config.replicas:
            from loopserve.fleet import FleetView

            return FleetView(config.replicas, config.model)
        return ServerView(config.server, config.model)

    def close(self) -> None:
        self.store.close()

    def run(self, reason: str, since: float | None = None) -> RunRecord:
        """One pass through the steps; returns what was recorded. `since`: retrain only on rows
        predicted after this time (where the change began)."""
        run_id = self.records.start_run(self.config.model, reason)
        log.info("pipeline run started", extra={"model": self.config.model, "run": run_id, "reason": reason})
        ctx = steps.RunContext(run_id, self.config, self.store, self.view, since=since)
        names = [n for n, _ in STEPS] + ["promote"]
        for position, (name, step) in enumerate(STEPS):
            if not self._step(ctx, position, name, step):
                if name in ("canary", "compare"):  # the canary alias moved: put it back on production
                    outcome = ctx.outcome
                    rolled_back = self._step(ctx, position + 1, "rollback", steps.roll_back)
                    self.records.finish_run(run_id, "rolled back" if rolled_back else "failed", _with_alerts(
                        outcome if rolled_back else f"{outcome}; then {ctx.outcome}", ctx))
                else:
                    for later, skipped in enumerate(names[position + 1:], position + 1):
                        self.records.start_step(run_id, skipped, later)
                        self.records.finish_step(run_id, skipped, "skipped", {})
                    self.records.finish_run(run_id, "stopped", _with_alerts(ctx.outcome, ctx))
                return self._finished(run_id)
        if self._step(ctx, len(STEPS), "promote", steps.promote):
            self.records.finish_run(run_id, "promoted", _with_alerts(
                f"version {ctx.candidate} is {self.config.production_alias}", ctx))
        else:
            self.records.finish_run(run_id, "failed", ctx.outcome)
        return self._finished(run_id)

    def _step(self, ctx: steps.RunContext, position: int, name: str, step) -> bool:
        self.records.start_step(ctx.run_id, name, position)
        started = time.monotonic()
        try:
            detail = step(ctx)
        except Exception as e:  # a step's failure is the run's outcome, never the process's end
            detail = getattr(e, "detail", {}) | {"error": f"{type(e).__name__}: {e}"}
            ctx.outcome = f"{name}: {e}"
            self.records.finish_step(ctx.run_id, name, "failed", detail)
            log.warning("pipeline step failed", extra={"run": ctx.run_id, "step": name, "reason": str(e),
                                                       "seconds": round(time.monotonic() - started, 3)})
            return False
        self.records.finish_step(ctx.run_id, name, "passed", detail)
        log.info("pipeline step passed", extra={"run": ctx.run_id, "step": name,
                                                "seconds": round(time.monotonic() - started, 3)})
        return True

    def _finished(self, run_id: str) -> RunRecord:
        record = next(r for r in self.records.runs(self.config.model, limit=5) if r.id == run_id)
        log.info("pipeline run finished", extra={"run": run_id, "status": record.status, "outcome": record.outcome})
        return record

    # -- triggers -------------------------------------------------------------------------

    def evidence(self) -> Evidence:
        """What the trigger rules look at, read from the server now."""
        from loopserve.pipeline.retrain_data import complete_accuracy_windows
        from loopserve.pipeline.trigger import DriftWindow

        drift = self.view.drift()
        closed = [w for w in drift.get("windows", []) if w.get("closed")]
        now = time.time()
        accuracy, total = complete_accuracy_windows(self.view.feedback(), drift.get("version"), now,
                                                    self.config.triggers.label_wait_s)
        last = self.records.last_run(self.config.model)
        return Evidence(now=now, drift_windows=[DriftWindow(w["start"], w["end"], w["verdict"]) for w in closed],
                        drifted_features=closed[-1]["drifted_features"] if closed else [],
                        accuracy_windows=accuracy, labels_total=total, labels_at_last_run=self._labels_at_last_run,
                        last_run_at=None if last is None else last.started_at)

    def check(self) -> Decision:
        """Decide once, record the decision, and run the pipeline if it fires."""
        decision = decide(self.config.triggers, self.evidence())
        self.records.record_decision(self.config.model, decision)
        log.info("trigger decision", extra={"model": self.config.model, "fire": decision.fire,
                                            "reasons": decision.reasons, "since": decision.since})
        if decision.fire:
            self._labels_at_last_run = decision.evidence.labels_total
            since = decision.since if self.config.retrain_data.since_change else None
            self.run("; ".join(decision.reasons), since=since)
        return decision

    def watch(self, until: float | None = None) -> None:
        """check() every poll_s, from the start of one check to the start of the next (a check
        that runs longer is followed at once), until `until` (a time.time() value) or forever."""
        next_check = time.monotonic()
        while until is None or time.time() < until:
            try:
                self.check()
            except ServerUnavailable as e:
                log.warning("server unavailable", extra={"reason": str(e)})
            next_check = max(next_check + self.config.poll_s, time.monotonic())
            time.sleep(max(0.0, next_check - time.monotonic()))
