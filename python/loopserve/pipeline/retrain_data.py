"""Reading what the server learned from feedback: labelled rows to retrain on (from the spill
files it appends), and live accuracy per version (from GET /v2/models/{m}/feedback)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loopserve.pipeline.trigger import AccuracyWindow


@dataclass(frozen=True)
class Examples:
    features: np.ndarray  # [rows, width] float32
    labels: np.ndarray  # [rows] int64
    groups: np.ndarray  # [rows] see group_column: int64 codes (-1: no group), or the groups' names as text
    predicted_at: np.ndarray  # [rows] float64: when the prediction was made
    labelled_at: np.ndarray  # [rows] float64: when its label came


def read_labelled_examples(feedback_dir: str | list[str], model: str, max_rows: int,
                           predicted_after: float | None = None) -> Examples:
    """The `max_rows` most recently predicted labelled rows the server (or every replica, from
    several directories) spilled for `model`
    (predicted after `predicted_after`, when given), oldest prediction first."""
    from loopserve.monitor.labelled import read_spill

    spilled = read_spill(feedback_dir, model, predicted_after=predicted_after)
    order = np.argsort(spilled.predicted_at, kind="stable")[-max_rows:] if len(spilled) else np.empty(0, np.int64)
    groups = group_column(spilled.groups[order])
    return Examples(np.asarray(spilled.X[order], np.float32), np.asarray(spilled.y[order], np.int64), groups,
                    np.asarray(spilled.predicted_at[order], np.float64), np.asarray(spilled.times[order], np.float64))


def group_column(groups: np.ndarray) -> np.ndarray:
    """The requests' `group` parameters as a data column: int64 codes when every request that
    named a group named an integer (-1: it named none), else text, each group as the request
    wrote it ("": none), which training and the gates turn into codes and names the same way
    (`loopserve.training.data.group_codes`)."""
    named = [g for g in groups if g is not None]
    if all(isinstance(g, int) for g in named):  # bool is an int too: True and 1 are one group
        return np.array([-1 if g is None else int(g) for g in groups], dtype=np.int64)
    return np.array(["" if g is None else str(g) for g in groups], dtype=str)


def version_accuracy(report: dict) -> dict[str, tuple[float | None, int]]:
    """version -> (accuracy, labels) over every label the version got since it was loaded."""
    return {str(v["version"]): (v["cumulative"]["accuracy"], v["cumulative"]["labels"])
            for v in report.get("versions", [])}


def complete_accuracy_windows(report: dict, version: str | None, now: float,
                              label_wait_s: float) -> tuple[list[AccuracyWindow], int]:
    """`version`'s prediction-time accuracy windows that are complete (ended at least
    `label_wait_s` ago: the labels still to come would not change them much), oldest first;
    and the labels joined so far for every version."""
    total = sum(counts.get("joined", 0) for counts in report.get("labels", {}).values())
    for v in report.get("versions", []):
        if str(v["version"]) == str(version):
            return [AccuracyWindow(w["start"], w["end"], w["accuracy"], w["labels"])
                    for w in v.get("by_prediction_time", [])
                    if w["end"] + label_wait_s <= now and w["accuracy"] is not None], total
    return [], total
