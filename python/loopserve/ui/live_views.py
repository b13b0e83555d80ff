"""What the UI's models and drift pages show from the running server: each model's versions
with their traffic share and live request counts and latency, and the reference against the
current histogram of one monitored feature."""

from __future__ import annotations

import math
import time

import numpy as np

from loopserve.errors import InvalidInput
from loopserve.monitor.profile import NumericProfile


def follows_registry(repository, name: str) -> bool:
    return repository.registry is not None and name in repository.registry.sources


def drift_alerts(repository) -> dict[tuple[str, int], bool]:
    """Whether each monitored version's latest closed window says drift. Off the event loop: a
    window that closed since the last look gets its statistics made here (tens of ms)."""
    alerts = {}
    for name, router in list(repository.routers.items()):
        for version, model in list(router.versions.items()):
            if model.drift is not None:
                latest = model.drift.latest_closed()
                alerts[(name, version)] = latest is not None and latest.verdict == "drift"
    return alerts


def models_view(repository, metrics, alerts: dict[tuple[str, int], bool]) -> dict:
    """Cumulative request counts with the time they were read (`at`): the page turns two reads
    into requests/s. Latency quantiles are the upper bounds of the histogram buckets holding them.
    On the event loop, which alone changes the routers and the latency histograms."""
    models = []
    for name, router in sorted(repository.routers.items()):
        state = router.state()
        versions = []
        for version, model in sorted(router.versions.items()):
            s = model.stats()
            latency = metrics.latency(name, str(version))
            drift = model.drift
            versions.append({
                "version": version, "weight": state.weights.get(version, 0.0), "shadow": version in state.shadow,
                "requests": s.success + s.failed + s.timed_out, "failed": s.failed + s.timed_out,
                "queued": s.queued, "p50_ms": _ms(latency.quantile(0.5)), "p99_ms": _ms(latency.quantile(0.99)),
                "drift": None if drift is None else {
                    "alert": alerts.get((name, version), False),
                    "features": [f.name for f in drift.profile.features] + [f.name for f in drift.profile.outputs]},
            })
        source = repository.registry.sources[name].source if follows_registry(repository, name) else "repository"
        models.append({"name": name, "source": source, "follows_registry": follows_registry(repository, name),
                       "stable": state.stable, "weights": state.weights, "shadow": state.shadow,
                       "versions": versions})
    return {"at": time.time(), "models": models}


def _ms(seconds: float) -> float | None:
    return None if math.isinf(seconds) or seconds == 0 else seconds * 1e3


def histogram_view(model, feature: str) -> dict:
    """Reference and current shares per bin (numeric) or category (categorical, "other" last)
    of `feature`, in the open window once it has the rows a verdict needs, else the last closed."""
    drift = model.drift
    found = _find_feature(drift.profile, feature)
    if found is None:
        names = [f.name for f in drift.profile.features] + [f.name for f in drift.profile.outputs]
        raise InvalidInput(f"feature={feature!r}: model '{model.name}' version {model.version} monitors {names}")
    profile, role, index = found
    windows = [w for w in drift.native.windows(True, 2) if w["inputs"].rows > 0]
    if len(windows) == 2 and windows[-1]["inputs"].rows < drift.config.policy.min_rows:
        windows.pop()
    window = windows[-1] if windows else None
    if isinstance(profile, NumericProfile):
        edges = [float(e) for e in profile.edges]
        labels = ([f"< {_num(edges[0])}"] + [f"{_num(a)} to {_num(b)}" for a, b in zip(edges, edges[1:])]
                  + [f">= {_num(edges[-1])}"])
        counts = None if window is None else window[_tensor(role)].bin_counts(index)
    else:
        labels = [str(c) for c in profile.categories] + ["other"]
        counts = None if window is None else window[_tensor(role)].category_counts(index)
    return {"model": model.name, "version": model.version, "feature": profile.name, "role": role,
            "kind": "numeric" if isinstance(profile, NumericProfile) else "categorical", "bins": labels,
            "reference": _shares(profile.counts), "current": None if counts is None else _shares(counts),
            "window": None if window is None else {"start": window["start"], "end": window["end"],
                                                   "closed": window["closed"], "rows": int(window["inputs"].rows)}}


def _find_feature(profile, name: str):
    """(feature profile, role, its index among the same kind in its tensor's accumulator)."""
    for role, features in (("input", profile.features), ("output", profile.outputs)):
        numeric = categorical = 0
        for f in features:
            is_numeric = isinstance(f, NumericProfile)
            if f.name == name:
                return f, role, numeric if is_numeric else categorical
            numeric += is_numeric
            categorical += not is_numeric
    return None


def _tensor(role: str) -> str:
    return "inputs" if role == "input" else "outputs"


def _shares(counts) -> list[float]:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return (counts / total if total else counts).tolist()


def _num(x: float) -> str:
    return f"{x:.4g}"
