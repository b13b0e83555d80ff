"""Runs the continuous-training pipeline, once (`run`) or whenever a trigger fires (`watch`).

It runs in its own process, never in the server's: it reads the server over HTTP, writes the
registry, and the server follows the registry's aliases. Every step and every trigger decision
is recorded in the store (see records.py), and logged as a JSON line.

One live run per model: a run holds the model's lease in the store, renewed by a heartbeat
thread while its steps run. Every start (run, roll_out, each check of watch) first takes over
runs whose process died (their lease ran out): the canary alias is cleared, so production
serves alone, and the runs are marked failed, "abandoned".
"""

from __future__ import annotations

import logging
import threading
import time

from loopserve.errors import LoopserveError
from loopserve.pipeline import steps
from loopserve.pipeline.config import PipelineConfig
from loopserve.pipeline.records import PipelineRecords, RunInProgress, RunRecord, lease_owner
from loopserve.pipeline.server_view import ServerUnavailable, ServerView
from loopserve.pipeline.trigger import Decision, Evidence, decide

log = logging.getLogger("loopserve.pipeline")

# (name, step); after "compare" either "promote" or "rollback" runs.
BUILD_STEPS = (("collect", steps.collect), ("validate", steps.validate), ("train", steps.train))
ROLL_OUT_STEPS = (("canary", steps.canary), ("compare", steps.compare))
STEPS = BUILD_STEPS + ROLL_OUT_STEPS


def yield_to_serving(config: PipelineConfig) -> None:
    """Lowers this process's CPU priority and torch's threads (see PipelineConfig.nice): a
    process-wide setting, so the CLI applies it to the pipeline's own process."""
    import os

    import torch

    os.nice(config.nice)
    torch.set_num_threads(config.train_threads or max(1, (os.cpu_count() or 2) // 2))


def _with_alerts(outcome: str, ctx: steps.RunContext) -> str:
    return "; ".join([outcome, *ctx.alerts])


class Heartbeat:
    """Renews a run's lease every lease_s / 4 from its own thread (and store connection) while
    the run's steps run. A lost lease (another pipeline took the run over) stops the beats; the
    run's promotion then refuses (steps.promote checks the lease)."""

    def __init__(self, config: PipelineConfig, run_id: str):
        self.config, self.run_id = config, run_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{run_id}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        from loopserve.store import Store

        with Store(self.config.store) as store:
            records = PipelineRecords(store, create=False)
            while not self._stop.wait(self.config.lease_s / 4):
                try:
                    if not records.renew(self.config.model, self.run_id, self.config.lease_s):
                        log.warning("pipeline run lost its lease", extra={"run": self.run_id})
                        return
                except Exception as e:  # a store hiccup: the next beat tries again, well within the lease
                    log.warning("pipeline lease renewal failed", extra={"run": self.run_id, "reason": str(e)})


class Pipeline:
    """Not thread-safe: one pipeline per process (it holds one store connection)."""

    def __init__(self, config: PipelineConfig, view: ServerView | None = None):
        from loopserve.store import Store

        self.config = config
        self.store = Store(config.store)
        self.records = PipelineRecords(self.store)
        self.view = view or self._view(config)
        self._labels_at_last_run: int | None = None  # restored from the store on first use

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
        predicted after this time (where the change began). RunInProgress while another live
        run of the model holds its lease."""
        self.take_over_abandoned()
        return self._run(self._start(reason), since)

    def _start(self, reason: str) -> str:
        run_id = self.records.start_run(self.config.model, reason, self.config.lease_s)
        log.info("pipeline run started", extra={"model": self.config.model, "run": run_id, "reason": reason})
        return run_id

    def _run(self, run_id: str, since: float | None) -> RunRecord:
        return self._run_steps(steps.RunContext(run_id, self.config, self.store, self.view, since=since), STEPS)

    def take_over_abandoned(self) -> list[str]:
        """Runs left `running` by a process that died (no live run holds the model's lease):
        the canary alias cleared (production serves alone) and each run marked failed,
        "abandoned". Returns their ids."""
        from loopserve.registry import clear_alias, current_version

        model = self.config.model
        taken = self.records.take_over(model, self.config.lease_s)
        if taken is None:
            return []
        recovery, runs = taken
        try:
            cleared = clear_alias(model, self.config.canary.alias, actor="pipeline", store=self.store,
                                  reason=f"pipeline: run {', '.join(runs)} abandoned (its process died)")
            production = current_version(model, self.config.production_alias, store=self.store)
            put_back = (f"canary v{cleared.version} cleared, " if cleared else "") + f"v{production} serves alone"
            for run_id in runs:
                self.records.finish_run(run_id, "failed", f"abandoned: its process stopped renewing the model's "
                                                          f"lease; taken over by {lease_owner()}: {put_back}")
            log.warning("pipeline runs abandoned, taken over", extra={"model": model, "runs": runs,
                                                                      "production": production})
        finally:
            self.records.release(model, recovery)
        return runs

    def roll_out(self, version: int, reason: str) -> RunRecord:
        """Canary an already registered version against production, then promote it or roll it
        back: the last steps of run(), for a version trained elsewhere."""
        from loopserve.registry import current_version, get_version

        self.take_over_abandoned()
        model, production_alias = self.config.model, self.config.production_alias
        candidate = get_version(model, version, store=self.store).version
        production = current_version(model, production_alias, store=self.store)
        if candidate == production:
            raise LoopserveError(f"version {candidate} of model '{model}' is {production_alias} already")
        run_id = self.records.start_run(model, reason, self.config.lease_s)
        log.info("pipeline roll-out started", extra={"model": model, "run": run_id, "version": candidate})
        ctx = steps.RunContext(run_id, self.config, self.store, self.view, production_version=production,
                               candidate=candidate)
        return self._run_steps(ctx, ROLL_OUT_STEPS)

    def _run_steps(self, ctx: steps.RunContext, chain: tuple) -> RunRecord:
        """Runs `chain`, then promote, renewing the run's lease meanwhile; a failed canary or
        compare is rolled back, any other failure stops the run (the later steps recorded as skipped)."""
        try:
            with Heartbeat(self.config, ctx.run_id):
                self._steps(ctx, chain)
        except BaseException as e:  # interrupted (Ctrl-C): no canary left serving, no run left `running`
            try:
                self._clear_canary(ctx)
                self.records.finish_run(ctx.run_id, "failed", f"interrupted: {type(e).__name__}: {e}")
            except Exception as cleanup:  # the lease runs out instead, and the next start takes the run over
                log.warning("pipeline run left unfinished", extra={"run": ctx.run_id, "reason": str(cleanup)})
            raise
        return self._finished(ctx.run_id)

    def _steps(self, ctx: steps.RunContext, chain: tuple) -> None:
        run_id = ctx.run_id
        names = [n for n, _ in chain] + ["promote"]
        for position, (name, step) in enumerate(chain):
            if not self._step(ctx, position, name, step):
                if name in ("canary", "compare"):  # the canary alias moved: clear it
                    self._roll_back(ctx, position + 1, "rolled back")
                else:
                    for later, skipped in enumerate(names[position + 1:], position + 1):
                        self.records.start_step(run_id, skipped, later)
                        self.records.finish_step(run_id, skipped, "skipped", {})
                    self.records.finish_run(run_id, "stopped", _with_alerts(ctx.outcome, ctx))
                return
        if self._step(ctx, len(chain), "promote", steps.promote):
            self.records.finish_run(run_id, "promoted", _with_alerts(
                f"version {ctx.candidate} is {self.config.production_alias}", ctx))
        else:  # production moved meanwhile, or the lease was lost: the canary must not stay
            self._roll_back(ctx, len(chain) + 1, "failed")

    def _clear_canary(self, ctx: steps.RunContext) -> None:
        from loopserve.registry import AliasConflict, clear_alias

        if ctx.candidate is None:
            return
        try:
            clear_alias(self.config.model, self.config.canary.alias, reason=f"pipeline run {ctx.run_id}: interrupted",
                        actor="pipeline", store=self.store, expect=ctx.candidate)
        except AliasConflict:
            pass  # no longer this run's canary (or never set): not ours to clear

    def _roll_back(self, ctx: steps.RunContext, position: int, status: str) -> None:
        outcome = ctx.outcome
        rolled_back = self._step(ctx, position, "rollback", steps.roll_back)
        self.records.finish_run(ctx.run_id, status if rolled_back else "failed", _with_alerts(
            outcome if rolled_back else f"{outcome}; then {ctx.outcome}", ctx))

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
        record = self.records.run(run_id)
        log.info("pipeline run finished", extra={"run": run_id, "status": record.status, "outcome": record.outcome})
        return record

    # -- triggers -------------------------------------------------------------------------

    def evidence(self) -> Evidence:
        """What the trigger rules look at, read from the server now."""
        from loopserve.pipeline.retrain_data import complete_accuracy_windows
        from loopserve.pipeline.trigger import DriftWindow

        drift = self._drift()
        closed = [w for w in drift.get("windows", []) if w.get("closed")]
        stable = drift.get("version") or self.view.traffic().get("stable")
        now = time.time()
        accuracy, total = complete_accuracy_windows(self.view.feedback(), stable, now,
                                                    self.config.triggers.label_wait_s)
        last = self.records.last_run(self.config.model)
        return Evidence(now=now, drift_windows=[DriftWindow(w["start"], w["end"], w["verdict"]) for w in closed],
                        drifted_features=closed[-1]["drifted_features"] if closed else [],
                        accuracy_windows=accuracy, labels_total=total, labels_at_last_run=self._labels_before(total),
                        last_run_at=None if last is None else last.started_at)

    def _drift(self) -> dict:
        """The stable version's drift report; {} (no drift evidence) where no rule reads drift or
        the model has no drift monitor (the drift route answers 404)."""
        if self.config.triggers.drift_windows is None:
            return {}
        try:
            return self.view.drift()
        except ServerUnavailable as e:
            if e.status == 404:
                return {}
            raise

    def _labels_before(self, total: int) -> int:
        """The labels the server had counted when the last run fired: remembered across pipeline
        restarts (the last fired decision's evidence); a count now below it means the server
        restarted (its count begins at 0 again), so every label it counts is new."""
        if self._labels_at_last_run is None:
            fired = self.records.decisions(self.config.model, limit=1, fired_only=True)
            self._labels_at_last_run = fired[0]["evidence"].get("labels_total", 0) if fired else 0
        if total < self._labels_at_last_run:
            self._labels_at_last_run = 0
        return self._labels_at_last_run

    def check(self) -> Decision:
        """Decide once, record the decision, and run the pipeline if it fires (first taking over
        abandoned runs). A decision that fires while another live run holds the model's lease is
        recorded as not fired, with the refusal as its first reason."""
        self.take_over_abandoned()
        decision = decide(self.config.triggers, self.evidence())
        run_id = None
        if decision.fire:
            try:
                run_id = self._start("; ".join(decision.reasons))
            except RunInProgress as e:
                decision = Decision(False, [f"refused: {e}", *decision.reasons], decision.evidence, decision.since)
        self.records.record_decision(self.config.model, decision)
        log.info("trigger decision", extra={"model": self.config.model, "fire": decision.fire,
                                            "reasons": decision.reasons, "since": decision.since})
        if run_id is not None:
            self._labels_at_last_run = decision.evidence.labels_total
            self._run(run_id, decision.since if self.config.retrain_data.since_change else None)
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
            except LoopserveError as e:  # a store hiccup, a fleet name not resolving: the next check retries
                log.warning("pipeline check failed", extra={"reason": f"{type(e).__name__}: {e}"})
            next_check = max(next_check + self.config.poll_s, time.monotonic())
            time.sleep(max(0.0, next_check - time.monotonic()))
