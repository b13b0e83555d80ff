"""The steps of one continuous-training run, each a function of the run's context.

collect -> validate -> train (with its gates, and registration) -> canary -> compare -> promote
or roll back. A step raises StepFailed to stop the run; production is only ever changed by the
last step, so a failed step leaves it as it was.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np

from loopserve.errors import LoopserveError
from loopserve.pipeline.config import PipelineConfig
from loopserve.pipeline.server_view import ServerView
from loopserve.server.latency import bucket_quantile

log = logging.getLogger("loopserve.pipeline")


class StepFailed(LoopserveError):
    def __init__(self, message: str, detail: dict | None = None):
        super().__init__(message)
        self.detail = detail or {}


@dataclass
class RunContext:
    """What the steps of one run hand each other."""

    run_id: str
    config: PipelineConfig
    store: object  # loopserve.store.Store
    view: ServerView
    production_version: int = 0
    production_dir: Path | None = None
    signature: object = None  # loopserve.training.export.Signature of the production version
    train_snapshot: str | None = None
    holdout_snapshot: str | None = None
    candidate: int | None = None
    since: float | None = None  # only rows predicted after this (the change point)
    canary_since: float | None = None  # when the server started serving the canary (unix seconds)
    outcome: str = ""
    facts: dict = field(default_factory=dict)
    alerts: list[str] = field(default_factory=list)  # for the run's outcome (production failing its gates)


def collect(ctx: RunContext) -> dict:
    """Labelled examples from live feedback, predicted after the change point (when the run has
    one), split by prediction time: the newest predictions are held out."""
    from loopserve.data import snapshot
    from loopserve.pipeline.retrain_data import read_labelled_examples
    from loopserve.registry import current_version, materialize
    from loopserve.training.export import SIGNATURE_FILE, Signature

    config = ctx.config
    ctx.production_version = current_version(config.model, config.production_alias, store=ctx.store)
    ctx.production_dir = materialize(config.model, ctx.production_version, store=ctx.store)
    sig_path = ctx.production_dir / SIGNATURE_FILE
    if not sig_path.is_file():
        raise StepFailed(f"production version {ctx.production_version} has no {SIGNATURE_FILE}: cannot tell its "
                         f"feature columns (train it with `loopserve train`)")
    ctx.signature = msgspec.json.decode(sig_path.read_bytes(), type=Signature)
    wanted = config.retrain_data
    started = time.monotonic()
    while True:  # labels come later than predictions: wait up to wait_s for enough of them
        examples = read_labelled_examples(wanted.feedback_dir, config.model, wanted.max_rows, ctx.since)
        rows = len(examples.labels)
        if rows >= wanted.min_rows or time.monotonic() - started >= wanted.wait_s:
            break
        time.sleep(min(1.0, wanted.wait_s))
    have = _what_collect_has(examples, ctx.since, time.monotonic() - started)
    if rows < wanted.min_rows:
        after = "" if ctx.since is None else f" predicted after the change point ({_utc(ctx.since)})"
        older = _labelled_but_older(wanted.feedback_dir, config.model, ctx.since)
        raise StepFailed(f"{rows} labelled rows{after} in {wanted.feedback_dir} after waiting {wanted.wait_s:.0f} s "
                         f"for their labels; retraining needs at least {wanted.min_rows}"
                         + (f" ({older} rows labelled since then were predicted before the change and are left out)"
                            if older else ""), have | {"labelled_before_change": older})
    width = len(ctx.signature.feature_names)
    if examples.features.shape[1] != width:
        raise StepFailed(f"labelled rows have {examples.features.shape[1]} features, the production model "
                         f"{width} ({ctx.signature.feature_names})")
    # The rows come in prediction order: the newest predictions are held out for the gates.
    cut = int(rows * (1 - config.retrain_data.holdout_fraction))
    parts = {"train": slice(0, cut), "holdout": slice(cut, rows)}
    ids = {}
    for part, index in parts.items():
        columns = {name: examples.features[index, i] for i, name in enumerate(ctx.signature.feature_names)}
        columns[ctx.signature.label] = examples.labels[index].astype(np.int64)
        if ctx.signature.group is not None:
            columns[ctx.signature.group] = examples.groups[index]  # codes, or names as sent
        ids[part] = snapshot(columns, store=ctx.store, name=f"{config.model}-{part}-{ctx.run_id}").id
    ctx.train_snapshot, ctx.holdout_snapshot = ids["train"], ids["holdout"]
    return have | {"train_rows": int(cut), "holdout_rows": int(rows - cut),
                   "positive_rate": float(examples.labels.mean()), "train_snapshot": ids["train"],
                   "holdout_snapshot": ids["holdout"], "production_version": ctx.production_version}


def _what_collect_has(examples, since: float | None, waited_s: float) -> dict:
    """Exactly what collect found: how many rows, predicted when, labelled how late."""
    have = {"rows": len(examples.labels), "since": since, "waited_s": round(waited_s, 3)}
    if len(examples.labels):
        delays = examples.labelled_at - examples.predicted_at
        have |= {"predicted_from": float(examples.predicted_at.min()), "predicted_to": float(examples.predicted_at.max()),
                 "label_delay_s": {"median": float(np.median(delays)), "p90": float(np.percentile(delays, 90)),
                                   "max": float(delays.max())}}
    return have


def _labelled_but_older(feedback_dir: str | list[str], model: str, since: float | None) -> int:
    """Rows labelled after `since` whose predictions were made before it."""
    from loopserve.monitor.labelled import read_spill

    if since is None:
        return 0
    return int(np.count_nonzero(read_spill(feedback_dir, model, since=since).predicted_at <= since))


def _utc(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d} UTC"


def validate(ctx: RunContext) -> dict:
    """The new rows against rules inferred from the data production was trained on: the training
    rows and the held-out rows both (the gates judge the candidate on the held-out ones, the
    newest: a feed that broke lately breaks them first)."""
    from loopserve.data import ColumnRule, DataSchema, infer_schema
    from loopserve.data import validate as validate_data
    from loopserve.registry import lineage

    reference = lineage(ctx.config.model, ctx.production_version, store=ctx.store).data_snapshot
    if reference is None:
        raise StepFailed(f"production version {ctx.production_version} has no data snapshot in its lineage: "
                         f"nothing to validate the new data against")
    v = ctx.config.validation
    inferred = infer_schema(reference, store=ctx.store, range_margin=v.range_margin, null_slack=v.null_slack,
                            max_mean_shift=v.max_mean_shift, max_std_ratio=v.max_std_ratio)
    sig = ctx.signature
    wanted = set(sig.feature_names) | {sig.label}
    # The same columns, compared as numbers: the feedback rows are float32 whatever the source types were.
    rules = [msgspec.structs.replace(r, type="numeric", categories=None) for r in inferred.columns if r.name in wanted]
    if sig.group:  # present, and nothing more: groups are names or codes (-1: none), never a model input
        rules.append(ColumnRule(name=sig.group))
    schema = DataSchema(columns=rules, reference=inferred.reference)
    checked, failures = {}, []
    for part, snapshot_id in (("train", ctx.train_snapshot), ("holdout", ctx.holdout_snapshot)):
        report = validate_data(snapshot_id, schema, store=ctx.store)
        checked[part] = len(report.checks)
        failures += [f"{part} {c.column}: {c.message}" for c in report.failures]
    if failures:
        raise StepFailed("the new data failed validation: " + "; ".join(failures[:5]), {"failures": failures})
    return {"reference_snapshot": reference, "rules_checked": checked["train"],
            "holdout_rules_checked": checked["holdout"]}


def train(ctx: RunContext) -> dict:
    """Train on the new rows; gates (against production) and registration happen inside."""
    from loopserve.training import train as train_model
    from loopserve.training.config import DataSpec, RegistrySpec, load_train_config
    from loopserve.training.gates import GateReport

    config = ctx.config
    template = load_train_config(config.train)
    sig = ctx.signature

    def spec(snapshot_id):
        return DataSpec(snapshot=snapshot_id, features=list(sig.feature_names), label=sig.label, group=sig.group,
                        categorical=dict(sig.categorical))

    if template.gates is None:
        raise StepFailed(f"{config.train}: the training template needs gates: a pipeline never registers an "
                         f"ungated model")
    output = msgspec.structs.replace(template.output, dir=str(Path(config.work_dir) / ctx.run_id), name=config.model,
                                     version="next")
    train_config = msgspec.structs.replace(
        template, data=spec(ctx.train_snapshot), holdout=spec(ctx.holdout_snapshot), output=output,
        production_model=str(ctx.production_dir), store=ctx.store.location,
        registry=RegistrySpec(enabled=True, alias=None, parent=ctx.production_version))
    result = train_model(train_config, quiet=True)
    detail = {"run_id": result.run_id, "metrics": result.metrics, "gates_passed": result.gates_passed,
              "gate_failures": result.gate_failures, "gate_report": result.gate_report}
    if result.gate_report is not None:  # every gate with what it was compared with, kept with the run
        report = GateReport.load(result.gate_report)
        detail["gates"] = [msgspec.to_builtins(g) for g in report.gates]
        detail["production_failing"] = [msgspec.to_builtins(g) for g in report.production_failing]
        detail["waived"] = [g.name for g in report.gates if g.waived]
        if report.production_failing:
            failing = "; ".join(g.reason for g in report.production_failing)
            log.warning("production fails its own gates", extra={
                "model": config.model, "run": ctx.run_id, "production": ctx.production_version,
                "gates": [g.name for g in report.production_failing], "policy": report.when_production_fails})
            ctx.alerts.append(f"production v{ctx.production_version} fails its own gates: {failing}")
    if not result.published:
        raise StepFailed("the candidate failed its gates: " + "; ".join(result.gate_failures), detail)
    ctx.candidate = result.registered_version
    return {**detail, "registered_version": ctx.candidate}


def canary(ctx: RunContext) -> dict:
    """Point the canary alias at the candidate; the server (every replica of a fleet) loads it
    beside production."""
    from loopserve.registry import set_alias

    c = ctx.config.canary
    set_alias(ctx.config.model, c.alias, ctx.candidate, reason=f"pipeline run {ctx.run_id}: canary",
              actor="pipeline", store=ctx.store)
    deadline = time.monotonic() + c.load_timeout_s
    while time.monotonic() < deadline:
        state = ctx.view.traffic()
        # A fleet's view is settled once every replica serves the same versions: the canary is
        # compared on all of them, not on the first replica that loaded it.
        if str(ctx.candidate) in {str(v) for v in state.get("weights", {})} and state.get("settled", True):
            ctx.canary_since = time.time()
            return {"weights": state["weights"], "serving_since": ctx.canary_since}
        time.sleep(c.poll_s)
    raise StepFailed(f"the server did not start serving version {ctx.candidate} as a canary within "
                     f"{c.load_timeout_s:.0f} s (does its config name canary_alias: {c.alias}?)")


def compare(ctx: RunContext) -> dict:
    """Canary against production on live error rate, latency and feedback accuracy."""
    from loopserve.serving.canary import VersionMetrics

    c = ctx.config.canary
    prod, cand = str(ctx.production_version), str(ctx.candidate)
    start = ctx.view.traffic()["metrics"]
    # Accuracy on the predictions both made since the canary started serving, by prediction time:
    # counted by label arrival, production's figure would take in late labels for its predictions
    # from before (another world, perhaps before the drift), the canary's could not.
    since = ctx.canary_since if ctx.canary_since is not None else time.time()
    started = time.monotonic()
    while True:
        time.sleep(c.poll_s)
        metrics = ctx.view.traffic()["metrics"]
        accuracy = accuracy_predicted_since(ctx.view.feedback(), since)
        seen = _delta(metrics, start, cand)["requests"]
        labels = accuracy.get(cand, (None, 0))[1]
        if (seen >= c.min_requests and labels >= c.min_labels) or time.monotonic() - started >= c.window_s:
            break
    p, q = _delta(metrics, start, prod), _delta(metrics, start, cand)
    acc_p, labels_p = accuracy.get(prod, (None, 0))
    acc_q, labels_q = accuracy.get(cand, (None, 0))
    facts = {"production": {**p, "accuracy": acc_p, "labels": labels_p},
             "canary": {**q, "accuracy": acc_q, "labels": labels_q}, "seconds": time.monotonic() - started,
             "accuracy_predicted_since": since}
    problems = []
    verdict = c.rule.decide(VersionMetrics(ctx.production_version, p["requests"], p["errors"], p["p99_s"]),
                            VersionMetrics(ctx.candidate, q["requests"], q["errors"], q["p99_s"]))
    facts["rule"] = {"action": verdict.action, "reason": verdict.reason}
    if verdict.action == "wait":
        problems.append(f"after {facts['seconds']:.0f} s (window {c.window_s:.0f} s): {verdict.reason}")
    elif verdict.action == "rollback":
        problems.append(verdict.reason)
    if c.min_labels > 0:
        if labels_q < c.min_labels or acc_p is None or acc_q is None:
            problems.append(f"the canary got {labels_q} labels (production {labels_p}) for predictions in the "
                            f"server's prediction-time windows (feedback.window_s) that began after it started "
                            f"serving; needs {c.min_labels} to compare accuracy")
        elif acc_q < acc_p - c.accuracy_margin:
            problems.append(f"canary accuracy {acc_q:.4f} < production {acc_p:.4f} - {c.accuracy_margin}")
    ctx.facts = facts
    if problems:
        raise StepFailed("the canary lost: " + "; ".join(problems), facts)
    return facts


def promote(ctx: RunContext) -> dict:
    """Production onto the candidate and the canary alias cleared, in one transaction: only while
    this run holds the model's lease and production is still the version the canary was
    compared against (a move made meanwhile, by a person or another pipeline, is never undone)."""
    from loopserve.registry.aliases import AliasConflict, move_alias, remove_alias

    config, reason = ctx.config, f"pipeline run {ctx.run_id}: canary won"
    with _run_transaction(ctx) as db:
        try:
            move_alias(db, config.model, config.production_alias, ctx.candidate, "set", "pipeline", reason,
                       expect=ctx.production_version)
        except AliasConflict as e:
            raise StepFailed(f"not promoted: {e}; the canary was compared against version {ctx.production_version}",
                             {"compared_against": ctx.production_version}) from None
        remove_alias(db, config.model, config.canary.alias, "pipeline", reason)
    _wait_for_single_version(ctx, ctx.candidate)
    return {"production": ctx.candidate, "previous": ctx.production_version}


def roll_back(ctx: RunContext) -> dict:
    """The canary alias cleared (if it still names this run's candidate): the server serves
    production, as it is now, alone."""
    from loopserve.registry.aliases import current_target, remove_alias
    from loopserve.registry.refs import resolve_version

    config = ctx.config
    with _run_transaction(ctx) as db:
        canary = current_target(db, config.model, config.canary.alias)
        if canary == ctx.candidate:
            remove_alias(db, config.model, config.canary.alias, "pipeline",
                         f"pipeline run {ctx.run_id}: canary lost", expect=canary)
        production = resolve_version(db, config.model, config.production_alias)
    _wait_for_single_version(ctx, production)
    left = {} if canary in (None, ctx.candidate) else {"canary_left_alone": canary}
    return {"production": production, "rejected": ctx.candidate} | left


@contextlib.contextmanager
def _run_transaction(ctx: RunContext):
    """A write transaction in the model's registry scope that goes on only while this run holds
    the model's lease (LeaseLost otherwise: another pipeline took the run over)."""
    from loopserve.pipeline.records import check_lease
    from loopserve.registry.schema import opened, registry_scope
    from loopserve.store import transaction

    with opened(ctx.store) as s, transaction(s.db, registry_scope(ctx.config.model)) as db:
        check_lease(db, ctx.config.model, ctx.run_id)
        yield db


def _wait_for_single_version(ctx: RunContext, version: int) -> None:
    deadline = time.monotonic() + ctx.config.canary.load_timeout_s
    while time.monotonic() < deadline:
        if set(ctx.view.traffic().get("weights", {})) == {str(version)}:
            return
        time.sleep(ctx.config.canary.poll_s)
    raise StepFailed(f"the server did not settle on version {version} alone within "
                     f"{ctx.config.canary.load_timeout_s:.0f} s")


def accuracy_predicted_since(report: dict, since: float) -> dict[str, tuple[float | None, int]]:
    """version -> (accuracy, labels) over the prediction-time windows of the feedback report that
    began at or after `since`: the labels for predictions made since then, whenever they came."""
    out = {}
    for v in report.get("versions", []):
        windows = [w for w in v.get("by_prediction_time", []) if w["start"] >= since]
        labels = sum(w["labels"] for w in windows)
        # a merged (fleet) window may carry the accuracy without the count behind it
        correct = sum(w["correct"] if "correct" in w else round((w["accuracy"] or 0.0) * w["labels"]) for w in windows)
        out[str(v["version"])] = (correct / labels if labels else None, labels)
    return out


def _delta(metrics: dict, start: dict, version: str) -> dict:
    """A version's requests, errors and p99 between two readings of the traffic route. The p99
    is the window's: production's whole history would hold its cold start and every load spike
    it ever saw, against a canary that saw only this window."""
    now, then = metrics.get(version, {}), start.get(version, {})
    requests = now.get("requests", 0) - then.get("requests", 0)
    errors = now.get("errors", 0) - then.get("errors", 0)
    counts_now, counts_then = now.get("latency_counts") or [], then.get("latency_counts") or []
    if counts_now:
        counts_then = counts_then if len(counts_then) == len(counts_now) else [0] * len(counts_now)
        p99 = bucket_quantile([a - b for a, b in zip(counts_now, counts_then)], 0.99)
    else:  # a server from before the counts were published
        p99 = now.get("p99_s", 0.0)
    return {"requests": requests, "errors": errors, "error_rate": errors / requests if requests else 0.0,
            "p99_s": p99}
