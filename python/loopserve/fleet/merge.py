"""Merging what several replicas report into one fleet view (pure functions, no I/O).

Drift windows are aligned by rank from the newest: the fleet's latest closed window merges every
replica's latest closed window, the one before merges the ones before, and so on; the open windows
merge into the fleet's open window. Replicas that share the traffic and close windows on the same
clock (`drift.window_seconds`) close them at about the same moments, so rank is time; a replica
that started later simply has fewer windows to give. The accumulators merge exactly (counts add,
quantile sketches merge), and the merged window is judged with the same profile and policy as a
single replica's, so a window that is "insufficient data" on every replica can be "drift" for
the fleet.

Live accuracy adds the replicas' label counts (labels, correct, tp, fp, fn, tn) per version and
recomputes the ratios; closed label windows are aligned by rank like drift windows, and windows of
prediction time (the accuracy trigger's evidence) by their bounds, which every replica computes
alike (floor(predicted_at / window_s)).
"""

from __future__ import annotations

from loopserve.config import DriftPolicy
from loopserve.monitor.monitor import merge_windows
from loopserve.monitor.profile import ReferenceProfile
from loopserve.monitor.report import WindowDrift
from loopserve.monitor.verdict import window_drift


def align_by_rank(series: list[list]) -> list[list]:
    """Groups of the k-th newest item of each series, oldest group first."""
    depth = max((len(s) for s in series), default=0)
    return [[s[-k] for s in series if len(s) >= k] for k in range(depth, 0, -1)]


def merged_windows(payloads: list[dict], include_open: bool = True) -> list[dict]:
    """One merged window (accumulators and span) per fleet window, oldest first, from the
    replicas' sketch payloads (`GET .../drift/sketch`, msgpack: accumulators as bytes)."""
    closed = [[w for w in p["windows"] if w["closed"]] for p in payloads]
    fleet = [dict(merge_windows(group), replicas=len(group)) for group in align_by_rank(closed)]
    if include_open:
        open_windows = [w for p in payloads for w in p["windows"] if not w["closed"]]
        if open_windows:
            fleet.append(dict(merge_windows(open_windows), replicas=len(open_windows)))
    return fleet


def fleet_drift(payloads: list[dict], profile: ReferenceProfile, policy: DriftPolicy,
                include_open: bool = True, last: int | None = None) -> list[WindowDrift]:
    """The verdicts of the merged windows (the newest `last` of them)."""
    windows = merged_windows(payloads, include_open)
    if last is not None:
        windows = windows[-last:]
    return [window_drift(w, profile, policy) for w in windows]


_COUNTS = ("labels", "correct", "tp", "fp", "fn", "tn")


def merge_metrics(metrics: list[dict], kind: str) -> dict:
    """WindowMetrics of several replicas as one: counts added, ratios recomputed."""
    total = {k: sum(m.get(k, 0) for m in metrics) for k in _COUNTS}
    labels = total["labels"]
    out = dict(total, accuracy=total["correct"] / labels if labels else None, precision=None, recall=None,
               start=min((m["start"] for m in metrics if m.get("labels")), default=0.0),
               end=max((m["end"] for m in metrics if m.get("labels")), default=0.0))
    if kind == "binary":
        predicted, actual = total["tp"] + total["fp"], total["tp"] + total["fn"]
        out["precision"] = total["tp"] / predicted if predicted else None
        out["recall"] = total["tp"] / actual if actual else None
    return out


def merge_prediction_windows(parts: list[dict], kind: str) -> list[dict]:
    """The versions' windows of prediction time (`by_prediction_time`) of several replicas as one
    list, oldest first: windows with the same bounds merged (counts added), each keeping them."""
    by_bounds: dict[tuple[float, float], list[dict]] = {}
    for part in parts:
        for w in part.get("by_prediction_time", []):
            by_bounds.setdefault((w["start"], w["end"]), []).append(w)
    return [dict(merge_metrics(group, kind), start=start, end=end)
            for (start, end), group in sorted(by_bounds.items())]


def merge_feedback(model: str, reports: list[dict]) -> dict:
    """The replicas' feedback reports (`GET .../feedback`) as one: label counts per version and
    status added; each version's cumulative, current and closed-window metrics merged."""
    labels: dict[str, dict[str, int]] = {}
    by_version: dict[str, list[dict]] = {}
    for report in reports:
        for version, counts in report.get("labels", {}).items():
            for status, n in counts.items():
                labels.setdefault(version, {})[status] = labels.get(version, {}).get(status, 0) + n
        for v in report.get("versions", []):
            by_version.setdefault(str(v["version"]), []).append(v)
    versions = []
    for version, parts in sorted(by_version.items(), key=lambda kv: int(kv[0])):
        kind = parts[0]["kind"]
        versions.append({
            "version": int(version), "kind": kind, "window_labels": sum(p["window_labels"] for p in parts),
            "cumulative": merge_metrics([p["cumulative"] for p in parts], kind),
            "current": merge_metrics([p["current"] for p in parts], kind),
            "windows": [merge_metrics(group, kind) for group in align_by_rank([p["windows"] for p in parts])],
            "window_s": parts[0].get("window_s", 0.0), "by_prediction_time": merge_prediction_windows(parts, kind),
            "replicas": len(parts)})
    return {"model": model, "labels": labels, "versions": versions,
            "labelled_rows": sum(r.get("labelled_rows", 0) for r in reports)}


def merge_traffic(states: list[dict]) -> dict:
    """The replicas' routing states (`GET .../traffic`) as one. Weights: each version's mean share
    over the replicas (0 where a replica does not serve it), so a version is listed as soon as
    one replica serves it and a rollout is settled when every replica lists the same versions.
    Per version: requests, errors and latency bucket counts added, p99 the worst replica's."""
    versions = sorted({v for s in states for v in s.get("weights", {})}, key=int)
    weights = {v: sum(s.get("weights", {}).get(v, 0.0) for s in states) / len(states) for v in versions}
    metrics: dict[str, dict] = {}
    for s in states:
        for v, m in s.get("metrics", {}).items():
            into = metrics.setdefault(v, {"version": m.get("version", int(v)), "requests": 0, "errors": 0, "p99_s": 0.0})
            into["requests"] += m.get("requests", 0)
            into["errors"] += m.get("errors", 0)
            into["p99_s"] = max(into["p99_s"], m.get("p99_s", 0.0))
            counts = m.get("latency_counts") or []
            have = into.setdefault("latency_counts", [0] * len(counts))
            if len(have) == len(counts):  # replicas of one release share the histogram's bounds
                into["latency_counts"] = [a + b for a, b in zip(have, counts)]
    stable = {s.get("stable") for s in states}
    return {"versions": sorted({v for s in states for v in s.get("versions", [])}), "weights": weights,
            "shadow": sorted({v for s in states for v in s.get("shadow", [])}),
            "stable": stable.pop() if len(stable) == 1 else None,
            "settled": len({tuple(sorted(s.get("weights", {}))) for s in states}) == 1, "metrics": metrics}
