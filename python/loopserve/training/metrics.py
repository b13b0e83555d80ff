"""Classification metrics in numpy: ROC AUC (rank-based, ties averaged), accuracy, per-group rates."""

from __future__ import annotations

import math

import msgspec
import numpy as np


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    values = np.asarray(values)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start of each run of equal values, and its length.
    starts = np.flatnonzero(np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]]))
    lengths = np.diff(np.concatenate([starts, [len(values)]]))
    run_rank = starts + (lengths + 1) / 2.0  # mean of ranks starts+1 .. starts+length
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(run_rank, lengths)
    return ranks


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a random positive > a random negative), ties count 1/2.
    NaN when only one class is present."""
    labels = np.asarray(labels).ravel().astype(bool)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels for {scores.size} scores")
    pos = int(labels.sum())
    neg = labels.size - pos
    if pos == 0 or neg == 0:
        return math.nan
    ranks = average_ranks(scores)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def accuracy(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> float:
    labels = np.asarray(labels).ravel().astype(bool)
    predicted = np.asarray(scores).ravel() >= threshold
    return float(np.mean(predicted == labels)) if labels.size else math.nan


def log_loss(labels: np.ndarray, scores: np.ndarray, eps: float = 1e-7) -> float:
    y = np.asarray(labels).ravel().astype(np.float64)
    p = np.clip(np.asarray(scores, dtype=np.float64).ravel(), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


class GroupStats(msgspec.Struct, frozen=True):
    """One group's rows at the decision threshold."""

    group: int
    name: str
    rows: int
    positives: int  # true label 1
    positive_rate: float  # predicted positive / rows
    true_positive_rate: float | None  # predicted positive among label 1; None without positives


def group_stats(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float = 0.5,
                names: list[str] | None = None) -> list[GroupStats]:
    """One entry per group code >= 0; rows without a group (negative codes) belong to none: they
    are not a group to compare the others with."""
    labels = np.asarray(labels).ravel().astype(bool)
    predicted = np.asarray(scores).ravel() >= threshold
    groups = np.asarray(groups).ravel()
    out = []
    for g in np.unique(groups[groups >= 0]):
        mask = groups == g
        positives = int(labels[mask].sum())
        tpr = float(predicted[mask & labels].mean()) if positives else None
        name = names[int(g)] if names is not None and 0 <= int(g) < len(names) else str(int(g))
        out.append(GroupStats(group=int(g), name=name, rows=int(mask.sum()), positives=positives,
                              positive_rate=float(predicted[mask].mean()), true_positive_rate=tpr))
    return out


def demographic_parity_difference(stats: list[GroupStats]) -> tuple[float, GroupStats, GroupStats] | None:
    """Largest gap in positive-prediction rate between two groups, with the highest and lowest
    group; None with fewer than two groups (one group's gap with itself is no measurement)."""
    if len(stats) < 2:
        return None
    hi = max(stats, key=lambda s: s.positive_rate)
    lo = min(stats, key=lambda s: s.positive_rate)
    return hi.positive_rate - lo.positive_rate, hi, lo


def equal_opportunity_difference(stats: list[GroupStats], min_positives: int = 1
                                 ) -> tuple[float, GroupStats, GroupStats] | None:
    """Largest gap in true-positive rate between groups with at least `min_positives` positives;
    None when fewer than two groups qualify."""
    eligible = [s for s in stats if s.positives >= min_positives and s.true_positive_rate is not None]
    if len(eligible) < 2:
        return None
    hi = max(eligible, key=lambda s: s.true_positive_rate)
    lo = min(eligible, key=lambda s: s.true_positive_rate)
    return hi.true_positive_rate - lo.true_positive_rate, hi, lo
