"""Reading what the server learned from feedback: labelled rows to retrain on (from the spill
files it appends), and live accuracy per version (from GET /v2/models/{m}/feedback)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Examples:
    features: np.ndarray  # [rows, width] float32
    labels: np.ndarray  # [rows] int64
    groups: np.ndarray  # [rows] int64 (-1 where the request named no group)
    times: np.ndarray  # [rows] float64: when the label came


def read_labelled_examples(feedback_dir: str, model: str, max_rows: int, since: float | None = None) -> Examples:
    """The most recent `max_rows` labelled rows the server spilled for `model` (labelled after
    `since`, when given)."""
    from loopserve.monitor.labelled import read_spill

    spilled = read_spill(feedback_dir, model, since=since)
    keep = slice(max(0, len(spilled) - max_rows), None)
    groups = np.array([-1 if g is None else int(g) for g in spilled.groups[keep]], dtype=np.int64)
    return Examples(np.asarray(spilled.X[keep], np.float32), np.asarray(spilled.y[keep], np.int64), groups,
                    np.asarray(spilled.times[keep], np.float64))


def version_accuracy(report: dict) -> dict[str, tuple[float | None, int]]:
    """version -> (accuracy, labels) over every label the version got since it was loaded."""
    return {str(v["version"]): (v["cumulative"]["accuracy"], v["cumulative"]["labels"])
            for v in report.get("versions", [])}


def live_accuracy(report: dict, version: str | None) -> tuple[float | None, int, int]:
    """(accuracy, labels) of `version`'s latest closed label window (else the one filling), and
    the labels joined so far for every version."""
    total = sum(counts.get("joined", 0) for counts in report.get("labels", {}).values())
    for v in report.get("versions", []):
        if str(v["version"]) == str(version):
            window = v["windows"][-1] if v["windows"] else v["current"]
            return window["accuracy"], window["labels"], total
    return None, 0, total
