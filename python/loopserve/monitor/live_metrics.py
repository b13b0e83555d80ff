"""Live metrics from ground-truth labels: accuracy, precision and recall per model version,
cumulative, over tumbling windows of a fixed number of labels (in the order labels arrive), and
over windows of prediction time (`window_s` seconds, by when the prediction was made: a label
that comes late still counts where its prediction belongs, so a window's accuracy describes the
model at that time, whatever the label delays).

How a prediction row becomes a class (the rule, by the width of the recorded output):

- **1 column** (a score, e.g. P(label=1)): binary; predicted positive when score >= threshold
  (`feedback.threshold`, default 0.5; null means 0.5).
- **2 columns**: binary; column 1 is the positive-class score, positive when it is >= threshold;
  with `threshold: null`, the argmax (for logits; a tie is class 0).
- **3 or more columns**: multi-class; the argmax. Accuracy only.

Labels are class indices: 0/1 (or true/false) for binary, 0..k-1 for k classes; a string is its
index in `feedback.classes` when that is set, otherwise "0"/"1"/"true"/"false" or an integer
literal. A request of n rows takes a list of n labels. Binary precision and recall are those
of class 1; either is None (JSON null) while its denominator is 0.
"""

from __future__ import annotations

from collections import deque

import msgspec
import numpy as np

BINARY, MULTICLASS = "binary", "multiclass"


class WindowMetrics(msgspec.Struct, frozen=True):
    """Metrics over a run of labels (a window, or every label so far)."""

    labels: int
    correct: int
    accuracy: float | None
    precision: float | None = None
    recall: float | None = None
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    # Label windows: when their first and last labels were joined. Prediction-time windows:
    # the window's bounds, [start, end) in prediction time (unix seconds).
    start: float = 0.0
    end: float = 0.0


class VersionFeedback(msgspec.Struct, frozen=True):
    """One version's live metrics: every label so far, the window filling now, recent closed
    windows (oldest first), and the recent windows of prediction time (oldest first; the newest
    still get labels as they come)."""

    version: int
    kind: str  # "binary" or "multiclass"
    window_labels: int
    cumulative: WindowMetrics
    current: WindowMetrics
    windows: list[WindowMetrics]
    window_s: float = 0.0
    by_prediction_time: list[WindowMetrics] = []


class PredictionRule:
    """Turns recorded prediction rows into classes, and labels into class indices."""

    def __init__(self, y_width: int, threshold: float | None, classes: list[str]):
        self.y_width = y_width
        self.kind = BINARY if y_width <= 2 else MULTICLASS
        self.n_classes = 2 if self.kind == BINARY else y_width
        self.threshold = 0.5 if threshold is None else threshold
        self.argmax = y_width > 2 or (y_width == 2 and threshold is None)
        self.classes = {name: i for i, name in enumerate(classes)}

    def predict(self, y: np.ndarray) -> np.ndarray:
        if self.argmax:
            return np.argmax(y, axis=1)
        score = y[:, 0] if self.y_width == 1 else y[:, 1]
        return (score >= self.threshold).astype(np.int64)

    def labels(self, label, rows: int) -> np.ndarray | str:
        """The label(s) of a request of `rows` rows as class indices, or why they are not."""
        if isinstance(label, list):
            if len(label) != rows:
                return f"the prediction has {rows} rows, the label list has {len(label)}"
            values = label
        elif rows != 1:
            return f"the prediction has {rows} rows: send a list of {rows} labels"
        else:
            values = [label]
        out = np.empty(rows, np.int64)
        for i, value in enumerate(values):
            index = self._index(value)
            if isinstance(index, str):
                return index
            out[i] = index
        return out

    def _index(self, value) -> int | str:
        if isinstance(value, bool):
            index = int(value)
        elif isinstance(value, int):
            index = value
        elif isinstance(value, float):
            if not value.is_integer():
                return f"label {value!r} is not a class index"
            index = int(value)
        elif isinstance(value, str):
            if value in self.classes:
                return self.classes[value]
            lowered = value.strip().lower()
            if lowered in ("true", "false"):
                index = int(lowered == "true")
            else:
                try:
                    index = int(lowered)
                except ValueError:
                    known = f" (classes: {', '.join(self.classes)})" if self.classes else ""
                    return f"label {value!r} is not a class name{known} nor a class index"
        else:
            return f"label {value!r} is not a number or a string"
        if not 0 <= index < self.n_classes:
            return f"label {value!r} is outside the classes 0..{self.n_classes - 1} of this {self.kind} model"
        return index


class _Counts:
    __slots__ = ("labels", "correct", "tp", "fp", "fn", "tn", "start", "end")

    def __init__(self):
        self.labels = self.correct = self.tp = self.fp = self.fn = self.tn = 0
        self.start = self.end = 0.0

    def add(self, predicted: np.ndarray, truth: np.ndarray, binary: bool, now: float) -> None:
        if not self.labels:
            self.start = now
        self.end = now
        self.labels += len(truth)
        self.correct += int(np.count_nonzero(predicted == truth))
        if binary:
            self.tp += int(np.count_nonzero(predicted & truth))
            self.fp += int(np.count_nonzero(predicted & (1 - truth)))
            self.fn += int(np.count_nonzero((1 - predicted) & truth))
            self.tn += int(np.count_nonzero((1 - predicted) & (1 - truth)))

    def metrics(self, binary: bool) -> WindowMetrics:
        accuracy = self.correct / self.labels if self.labels else None
        if not binary:
            return WindowMetrics(self.labels, self.correct, accuracy, start=self.start, end=self.end)
        precision = self.tp / (self.tp + self.fp) if self.tp + self.fp else None
        recall = self.tp / (self.tp + self.fn) if self.tp + self.fn else None
        return WindowMetrics(self.labels, self.correct, accuracy, precision, recall, self.tp, self.fp, self.fn,
                             self.tn, self.start, self.end)


class LiveMetrics:
    """One version's metrics. Not thread-safe by itself: its owner holds a lock."""

    def __init__(self, version: int, kind: str, window_labels: int, history: int, window_s: float = 10.0):
        self.version = version
        self.kind = kind
        self.window_labels = window_labels
        self.window_s = window_s
        self.history = history
        self.cumulative = _Counts()
        self.current = _Counts()
        self.closed: deque[WindowMetrics] = deque(maxlen=history)
        self.by_time: dict[int, _Counts] = {}  # floor(predicted_at / window_s) -> counts

    def add(self, predicted: np.ndarray, truth: np.ndarray, now: float,
            predicted_at: np.ndarray | None = None) -> None:
        """Labels `truth` for predictions `predicted` (classes), joined at `now`; `predicted_at`
        (one per row) places them in their prediction-time windows."""
        binary = self.kind == BINARY
        self.cumulative.add(predicted, truth, binary, now)
        if predicted_at is not None:
            self._add_by_time(predicted, truth, predicted_at, binary)
        while len(truth):
            room = self.window_labels - self.current.labels
            self.current.add(predicted[:room], truth[:room], binary, now)
            predicted, truth = predicted[room:], truth[room:]
            if self.current.labels >= self.window_labels:
                self.closed.append(self.current.metrics(binary))
                self.current = _Counts()

    def _add_by_time(self, predicted: np.ndarray, truth: np.ndarray, predicted_at: np.ndarray, binary: bool) -> None:
        buckets = np.floor(np.asarray(predicted_at, np.float64) / self.window_s).astype(np.int64)
        oldest_kept = max(self.by_time, default=int(buckets.max())) - self.history + 1
        for bucket in np.unique(buckets):
            if bucket < oldest_kept:
                continue  # a label for a window already dropped
            rows = buckets == bucket
            counts = self.by_time.setdefault(int(bucket), _Counts())
            counts.add(predicted[rows], truth[rows], binary, 0.0)
        for old in sorted(self.by_time)[:-self.history]:
            del self.by_time[old]

    def snapshot(self, last: int | None = None) -> VersionFeedback:
        binary = self.kind == BINARY
        windows = list(self.closed)
        by_time = [msgspec.structs.replace(counts.metrics(binary), start=bucket * self.window_s,
                                           end=(bucket + 1) * self.window_s)
                   for bucket, counts in sorted(self.by_time.items())]
        if last is not None:
            windows = windows[-last:] if last > 0 else []
            by_time = by_time[-last:] if last > 0 else []
        return VersionFeedback(self.version, self.kind, self.window_labels, self.cumulative.metrics(binary),
                               self.current.metrics(binary), windows, self.window_s, by_time)
