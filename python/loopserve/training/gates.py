"""Evaluation gates: may this candidate model replace the one in production?

    report = evaluate_gates("models/fraud", holdout, GateConfig(min_auc=0.8, max_p99_latency_ms=5),
                            production_model_dir="prod/fraud")
    report.passed, report.failures()[0].reason   # "auc 0.71 < production 0.84 on 20,000 held-out rows"

Both models are run the way they will be served: loaded from their model directories by
`loopserve.Model` (the native batcher and the model's own backend), on the same held-out rows.
Gates: AUC and accuracy over thresholds and not below production's (less a margin); fairness
across the group attribute (demographic parity and equal opportunity differences at the
decision threshold), under a ceiling and, per gate, no worse than production's on the same rows
(plus a margin); p99 latency of single-row requests. A gate that cannot be evaluated (no groups
in the holdout, fewer than two groups with rows, one class only) fails, saying why: a gate never
passes by default. Rows without a group (code -1: the request named none) are in no group.
Every result carries production's value on the same rows, so a rejection says what it was
compared with.

Production is held to the same floors and ceilings (not latency: it is measured serving). When
it fails some (`production_failing` in the report), `when_production_fails` decides: "alert"
only records it; "promote_if_better" waives, for the candidate, each of those gates on which the
candidate does better than production, and, when production fails its AUC or accuracy floor, every
fairness comparison with production (its fairness figures mean nothing then), recorded as `waived`;
every floor and ceiling must still pass.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from loopserve.errors import LoopserveError
from loopserve.training import metrics as m
from loopserve.training.config import GateConfig

GATES_FILE = "gates.json"


class GateError(LoopserveError):
    """The gates cannot be run at all (a model that does not load, holdout rows that do not fit it)."""


class GateResult(msgspec.Struct, frozen=True):
    name: str
    value: float | None  # the candidate's
    threshold: float | None
    passed: bool
    reason: str
    production: float | None = None  # production's value on the same rows, when it was measured
    waived: bool = False  # failed, but passed by the when_production_fails policy


class GateReport(msgspec.Struct, frozen=True):
    passed: bool
    gates: list[GateResult]
    rows: int
    positives: int
    candidate: str
    production: str | None
    metrics: dict[str, float]  # candidate_auc, candidate_accuracy, production_auc, ..., latency_p99_ms
    groups: list[m.GroupStats]
    decision_threshold: float
    evaluated_at: str
    production_failing: list[GateResult] = []  # production against the same floors and ceilings
    when_production_fails: str = "alert"

    def failures(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]

    def summary(self) -> str:
        """One line per gate, failures first."""
        lines = [f"{'PASS' if g.passed else 'FAIL'} {g.name}: {g.reason}"
                 for g in sorted(self.gates, key=lambda g: g.passed)]
        head = "all gates passed" if self.passed else f"{len(self.failures())} of {len(self.gates)} gates failed"
        return "\n".join([head, *lines])

    def to_json(self) -> bytes:
        return msgspec.json.format(msgspec.json.encode(self), indent=1)

    def save(self, path: str | Path) -> Path:
        """Write the report as JSON; a directory gets `gates.json` inside it."""
        path = Path(path)
        if path.is_dir():
            path = path / GATES_FILE
        path.write_bytes(self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "GateReport":
        path = Path(path)
        if path.is_dir():
            path = path / GATES_FILE
        return msgspec.json.decode(path.read_bytes(), type=cls)


class _Served:
    """A model directory loaded as loopserve serves it; one float32 input, one output."""

    def __init__(self, model_dir: str | Path, version: int | None, role: str, label: str | None = None):
        from loopserve.serving.model import Model

        try:
            self.model = Model.load(model_dir, version)
        except LoopserveError as e:
            raise GateError(f"the {role} model cannot be loaded: {e}") from None
        self.label = label or f"{self.model.name} v{self.model.version} ({model_dir})"
        if len(self.model.inputs) != 1 or len(self.model.outputs) < 1:
            raise GateError(f"the {role} model {self.label} must take one input tensor; it declares "
                            f"{[t.name for t in self.model.inputs]}")
        self.input = self.model.inputs[0]
        self.output = self.model.outputs[0].name
        self.max_rows = self.model.config.max_batch_size or 1

    def check_width(self, width: int, role: str) -> None:
        dims = list(self.input.dims)
        if dims and dims[-1] not in (-1, width):
            raise GateError(f"the holdout rows have {width} features, the {role} model {self.label} takes "
                            f"{self.input.name} {dims}")

    def scores(self, features: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(features), self.max_rows):
            chunk = np.ascontiguousarray(features[i:i + self.max_rows], dtype=np.float32)
            out.append(np.asarray(self.model.infer_sync({self.input.name: chunk})[self.output]).reshape(len(chunk), -1)[:, -1])
        return np.concatenate(out).astype(np.float64)

    def p99_latency_ms(self, features: np.ndarray, calls: int, warmup: int) -> float:
        rows = [np.ascontiguousarray(features[i % len(features)][None, :], dtype=np.float32)
                for i in range(calls + warmup)]
        for x in rows[:warmup]:
            self.model.infer_sync({self.input.name: x})
        times = np.empty(calls)
        for j, x in enumerate(rows[warmup:]):
            t0 = time.perf_counter_ns()
            self.model.infer_sync({self.input.name: x})
            times[j] = time.perf_counter_ns() - t0
        return float(np.percentile(times, 99)) / 1e6

    def close(self) -> None:
        self.model.close()


def _fmt(x: float) -> str:
    return f"{x:.4f}".rstrip("0").rstrip(".") if math.isfinite(x) else str(x)


def _metric_gates(name: str, value: float, minimum: float | None, production: float | None, margin: float,
                  rows: int, measured: float | None) -> list[GateResult]:
    """`production`: compare with it (None: no such gate); `measured`: production's value, shown."""
    where = f"on {rows:,} held-out rows"
    out = []
    if minimum is not None:
        ok = value >= minimum
        shown = "" if measured is None else f" (production {_fmt(measured)})"
        out.append(GateResult(f"{name}_min", value, minimum, bool(ok),
                              f"{name} {_fmt(value)} {'>=' if ok else '<'} {_fmt(minimum)} {where}{shown}"
                              if math.isfinite(value) else f"{name} is undefined {where} (one class only)",
                              _finite(measured)))
    if production is not None:
        bar = production - margin
        ok = value >= bar
        against = f"production {_fmt(production)}" + (f" - margin {_fmt(margin)}" if margin else "")
        out.append(GateResult(f"{name}_vs_production", value, bar, bool(ok),
                              f"{name} {_fmt(value)} {'>=' if ok else '<'} {against} {where}"
                              if math.isfinite(value) and math.isfinite(production)
                              else f"{name} is undefined {where} (one class only)", _finite(production)))
    return out


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


_FAIRNESS = ("demographic_parity_difference", "equal_opportunity_difference")


def _fairness_value(key: str, gates: GateConfig, groups: np.ndarray | None,
                    stats: list[m.GroupStats]) -> tuple[float | None, str]:
    """(the difference, what it is made of), or (None, why it cannot be measured)."""
    if groups is None:
        return None, f"{key.replace('_', ' ')} cannot be measured: the holdout has no group attribute"
    at = f"at threshold {_fmt(gates.decision_threshold)}"
    if key == "demographic_parity_difference":
        found = m.demographic_parity_difference(stats)
        if found is None:
            return None, (f"demographic parity difference cannot be measured: fewer than two groups have rows "
                          f"({', '.join(f'{s.name!r}: {s.rows}' for s in stats) or 'none'}; rows without a "
                          f"group are left out)")
        value, hi, lo = found
        return value, (f"positive rate {_fmt(hi.positive_rate)} for group {hi.name!r} vs {_fmt(lo.positive_rate)} "
                       f"for {lo.name!r} {at}")
    found = m.equal_opportunity_difference(stats, gates.min_group_positives)
    if found is None:
        return None, (f"equal opportunity difference cannot be measured: fewer than two groups have "
                      f"{gates.min_group_positives}+ positive rows "
                      f"({', '.join(f'{s.name!r}: {s.positives}' for s in stats) or 'no group has rows'})")
    value, hi, lo = found
    skipped = [s.name for s in stats if s.positives < gates.min_group_positives]
    return value, (f"true positive rate {_fmt(hi.true_positive_rate)} for group {hi.name!r} vs "
                   f"{_fmt(lo.true_positive_rate)} for {lo.name!r} {at}"
                   + (f"; groups with under {gates.min_group_positives} positives left out: {skipped}" if skipped else ""))


def _fairness_gates(gates: GateConfig, groups: np.ndarray | None, stats: list[m.GroupStats],
                    production: list[m.GroupStats] | None) -> list[GateResult]:
    """Ceilings, and non-inferiority against production (`production`: its group stats on the
    same rows, None without a production model)."""
    out = []
    limits = {"demographic_parity_difference": gates.max_demographic_parity_difference,
              "equal_opportunity_difference": gates.max_equal_opportunity_difference}
    for key in _FAIRNESS:
        limit, margin = limits[key], gates.fairness_vs_production.get(key)
        if limit is None and (margin is None or production is None):
            continue
        value, detail = _fairness_value(key, gates, groups, stats)
        prod = None if production is None else _fairness_value(key, gates, groups, production)[0]
        words = key.replace("_", " ")
        if limit is not None:
            if value is None:
                out.append(GateResult(key, None, limit, False, detail, prod))
            else:
                ok = value <= limit
                shown = "" if prod is None else f"; production {_fmt(prod)}"
                out.append(GateResult(key, value, limit, bool(ok),
                                      f"{words} {_fmt(value)} {'<=' if ok else '>'} {_fmt(limit)} ({detail}{shown})",
                                      prod))
        if margin is not None and production is not None:
            name = f"{key}_vs_production"
            if value is None or prod is None:
                out.append(GateResult(name, value, None, False, f"{words} cannot be compared with production: "
                                      + (detail if value is None else "production's cannot be measured"), prod))
                continue
            bar = prod + margin
            ok = value <= bar
            out.append(GateResult(name, value, bar, bool(ok),
                                  f"{words} {_fmt(value)} {'<=' if ok else '>'} production {_fmt(prod)}"
                                  + (f" + margin {_fmt(margin)}" if margin else "") + f" on the same rows ({detail})",
                                  prod))
    return out


def _production_failing(gates: GateConfig, prod: dict, prod_stats: list[m.GroupStats] | None,
                        groups: np.ndarray | None, rows: int) -> list[GateResult]:
    """Production against the candidate's floors and ceilings, on the same rows: the ones it fails."""
    out = []
    for name, minimum in (("auc", gates.min_auc), ("accuracy", gates.min_accuracy)):
        value = prod[name]
        if minimum is not None and value is not None and math.isfinite(value) and value < minimum:
            out.append(GateResult(f"{name}_min", value, minimum, False,
                                  f"production {name} {_fmt(value)} < {_fmt(minimum)} on {rows:,} held-out rows"))
    limits = {"demographic_parity_difference": gates.max_demographic_parity_difference,
              "equal_opportunity_difference": gates.max_equal_opportunity_difference}
    for key, limit in limits.items():
        if limit is None or prod_stats is None:
            continue
        value, detail = _fairness_value(key, gates, groups, prod_stats)
        if value is not None and value > limit:
            out.append(GateResult(key, value, limit, False,
                                  f"production {key.replace('_', ' ')} {_fmt(value)} > {_fmt(limit)} ({detail})"))
    return out


def _waive(results: list[GateResult], failing: list[GateResult]) -> list[GateResult]:
    """The promote_if_better policy: a failed gate that production fails too, where the
    candidate does better than production, passes as waived. And a production that fails its own
    AUC or accuracy floor is no yardstick for fairness: a failed fairness comparison with it
    (`*_vs_production`) passes as waived, while every floor and ceiling still holds for the
    candidate. (Under concept
    drift production ranks the new cases worse than chance: its recall is low in every group, so
    its fairness gap looks small, and a sound candidate failed "no worse than production".)"""
    prod = {g.name: g.value for g in failing}
    out = []
    for r in results:
        p = prod.get(r.name)
        better = r.value is not None and p is not None and (r.value > p if r.name.endswith("_min") else r.value < p)
        if not r.passed and better:
            r = msgspec.structs.replace(r, passed=True, waived=True,
                                        reason=f"{r.reason}; waived: production fails this gate too "
                                               f"({_fmt(p)}) and the candidate does better")
        elif not r.passed and r.name.endswith("_vs_production") and r.value is not None \
                and _no_yardstick(r.name.removesuffix("_vs_production"), prod):
            r = msgspec.structs.replace(r, passed=True, waived=True,
                                        reason=f"{r.reason}; waived: production fails its own gates "
                                               f"({', '.join(prod)}), so it is no yardstick")
        out.append(r)
    return out


def _no_yardstick(measure: str, production_fails: dict) -> bool:
    """`measure` is a fairness measure and production fails its own AUC or accuracy floor: its
    predictions are too poor for its fairness figures to mean anything (a production failing a
    fairness ceiling is still the bar for AUC, and on the measure it fails, "better" decides)."""
    return measure in _FAIRNESS and any(name in ("auc_min", "accuracy_min") for name in production_fails)


def evaluate_gates(candidate_model_dir: str | Path, holdout: Any, gates: GateConfig,
                   production_model_dir: str | Path | None = None, *, candidate_version: int | None = None,
                   production_version: int | None = None, candidate_label: str | None = None) -> GateReport:
    """Run the gates on `holdout` (anything with `.features` [n, F], `.labels` [n] and `.groups` [n]
    or None; `.group_names` optional). Versions default to the highest in each directory;
    `candidate_label` names the candidate in the report (default: name, version and directory)."""
    features = np.asarray(holdout.features, dtype=np.float32)
    labels = np.asarray(holdout.labels).reshape(-1)
    groups = getattr(holdout, "groups", None)
    groups = None if groups is None else np.asarray(groups).reshape(-1)
    if features.ndim != 2 or len(features) != len(labels) or (groups is not None and len(groups) != len(labels)):
        raise GateError(f"holdout shapes do not fit: features {features.shape}, labels {labels.shape}, groups "
                        f"{None if groups is None else groups.shape}; expected [n, F], [n], [n]")
    if len(labels) == 0:
        raise GateError("the holdout has no rows")
    rows = len(labels)
    candidate = _Served(candidate_model_dir, candidate_version, "candidate", candidate_label)
    production = None
    try:
        candidate.check_width(features.shape[1], "candidate")
        scores = candidate.scores(features)
        results_metrics = {"candidate_auc": m.roc_auc(labels, scores),
                           "candidate_accuracy": m.accuracy(labels, scores, gates.decision_threshold)}
        prod = {"auc": None, "accuracy": None}
        prod_scores = None
        if production_model_dir is not None:
            production = _Served(production_model_dir, production_version, "production")
            production.check_width(features.shape[1], "production")
            prod_scores = production.scores(features)
            prod = {"auc": m.roc_auc(labels, prod_scores),
                    "accuracy": m.accuracy(labels, prod_scores, gates.decision_threshold)}
            results_metrics.update(production_auc=prod["auc"], production_accuracy=prod["accuracy"])
        results: list[GateResult] = []
        for name, minimum in (("auc", gates.min_auc), ("accuracy", gates.min_accuracy)):
            versus = prod[name] if name in gates.compare_to_production else None
            results += _metric_gates(name, results_metrics[f"candidate_{name}"], minimum, versus,
                                     gates.production_margin, rows, prod[name])
        names = getattr(holdout, "group_names", None)
        stats = [] if groups is None else m.group_stats(labels, scores, groups, gates.decision_threshold, names)
        prod_stats = None
        if prod_scores is not None:
            prod_stats = [] if groups is None else m.group_stats(labels, prod_scores, groups,
                                                                 gates.decision_threshold, names)
        results += _fairness_gates(gates, groups, stats, prod_stats)
        failing = [] if prod_scores is None else _production_failing(gates, prod, prod_stats, groups, rows)
        results_metrics["production_failing_gates"] = len(failing) if prod_scores is not None else None
        if gates.when_production_fails == "promote_if_better":
            results = _waive(results, failing)
        if gates.max_p99_latency_ms is not None:
            p99 = candidate.p99_latency_ms(features, gates.latency_calls, gates.latency_warmup)
            results_metrics["latency_p99_ms"] = p99
            ok = p99 <= gates.max_p99_latency_ms
            results.append(GateResult("latency_p99_ms", p99, gates.max_p99_latency_ms, bool(ok),
                                      f"p99 latency at batch 1 {p99:.3f} ms {'<=' if ok else '>'} budget "
                                      f"{gates.max_p99_latency_ms:g} ms over {gates.latency_calls} calls "
                                      f"(after {gates.latency_warmup} warm-up calls)"))
    finally:
        candidate.close()
        if production is not None:
            production.close()
    for g in stats:
        results_metrics[f"group_{g.group}_positive_rate"] = g.positive_rate
    return GateReport(passed=all(r.passed for r in results), gates=results, rows=rows,
                      positives=int(labels.astype(bool).sum()), candidate=candidate.label,
                      production=None if production is None else production.label,
                      metrics={k: float(v) for k, v in results_metrics.items() if v is not None and math.isfinite(v)},
                      groups=stats, decision_threshold=gates.decision_threshold,
                      evaluated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      production_failing=failing, when_production_fails=gates.when_production_fails)
