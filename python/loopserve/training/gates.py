"""Evaluation gates: may this candidate model replace the one in production?

    report = evaluate_gates("models/fraud", holdout, GateConfig(min_auc=0.8, max_p99_latency_ms=5),
                            production_model_dir="prod/fraud")
    report.passed, report.failures()[0].reason   # "auc 0.71 < production 0.84 on 20,000 held-out rows"

Both models are run the way they will be served: loaded from their model directories by
`loopserve.Model` (the native batcher and the model's own backend), on the same held-out rows.
Gates: AUC and accuracy over thresholds and not below production's (less a margin); fairness
across the group attribute (demographic parity and equal opportunity differences at the
decision threshold); p99 latency of single-row requests. A gate that cannot be evaluated (no
groups in the holdout, one class only) fails, saying why: a gate never passes by default.
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
    value: float | None
    threshold: float | None
    passed: bool
    reason: str


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
                  rows: int) -> list[GateResult]:
    where = f"on {rows:,} held-out rows"
    out = []
    if minimum is not None:
        ok = value >= minimum
        out.append(GateResult(f"{name}_min", value, minimum, bool(ok),
                              f"{name} {_fmt(value)} {'>=' if ok else '<'} {_fmt(minimum)} {where}"
                              if math.isfinite(value) else f"{name} is undefined {where} (one class only)"))
    if production is not None:
        bar = production - margin
        ok = value >= bar
        against = f"production {_fmt(production)}" + (f" - margin {_fmt(margin)}" if margin else "")
        out.append(GateResult(f"{name}_vs_production", value, bar, bool(ok),
                              f"{name} {_fmt(value)} {'>=' if ok else '<'} {against} {where}"
                              if math.isfinite(value) and math.isfinite(production)
                              else f"{name} is undefined {where} (one class only)"))
    return out


def _fairness_gates(gates: GateConfig, groups: np.ndarray | None, stats: list[m.GroupStats]) -> list[GateResult]:
    out = []
    wanted = [(k, t) for k, t in (("demographic_parity_difference", gates.max_demographic_parity_difference),
                                  ("equal_opportunity_difference", gates.max_equal_opportunity_difference))
              if t is not None]
    for key, limit in wanted:
        if groups is None:
            out.append(GateResult(key, None, limit, False, f"{key.replace('_', ' ')} cannot be measured: the "
                                                           f"holdout has no group attribute"))
            continue
        at = f"at threshold {_fmt(gates.decision_threshold)}"
        if key == "demographic_parity_difference":
            value, hi, lo = m.demographic_parity_difference(stats)
            detail = (f"positive rate {_fmt(hi.positive_rate)} for group {hi.name!r} vs {_fmt(lo.positive_rate)} "
                      f"for {lo.name!r} {at}")
        else:
            found = m.equal_opportunity_difference(stats, gates.min_group_positives)
            if found is None:
                out.append(GateResult(key, None, limit, False,
                                      f"equal opportunity difference cannot be measured: fewer than two groups "
                                      f"have {gates.min_group_positives}+ positive rows "
                                      f"({', '.join(f'{s.name!r}: {s.positives}' for s in stats)})"))
                continue
            value, hi, lo = found
            skipped = [s.name for s in stats if s.positives < gates.min_group_positives]
            detail = (f"true positive rate {_fmt(hi.true_positive_rate)} for group {hi.name!r} vs "
                      f"{_fmt(lo.true_positive_rate)} for {lo.name!r} {at}"
                      + (f"; groups with under {gates.min_group_positives} positives left out: {skipped}"
                         if skipped else ""))
        ok = value <= limit
        out.append(GateResult(key, value, limit, bool(ok), f"{key.replace('_', ' ')} {_fmt(value)} "
                                                           f"{'<=' if ok else '>'} {_fmt(limit)} ({detail})"))
    return out


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
                                     gates.production_margin, rows)
        stats = [] if groups is None else m.group_stats(labels, scores, groups, gates.decision_threshold,
                                                        getattr(holdout, "group_names", None))
        results += _fairness_gates(gates, groups, stats)
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
                      evaluated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
