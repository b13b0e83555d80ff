"""Labelled examples: the (inputs, label) pairs that feedback joined, for retraining.

Kept two ways: in memory (`LabelledBuffer`, the most recent rows, bounded) and, when the
model's `feedback.spill_dir` is set, appended to JSON-lines files a pipeline process can read
(`read_spill`): `<spill_dir>/<model>/labels-000001.jsonl`, a new file once one passes
`spill_max_bytes`. Files are only ever appended to and never renamed, so a reader may read
them while the server writes (a line being written may be incomplete at the end of the last
file: it is skipped). One line per joined request id:

    {"id": "...", "model": "fraud", "version": 2, "predicted_at": 1767000000.1,
     "labelled_at": 1767000042.5, "group": "A", "label": [1], "x": [[0.1, ...]], "prediction": [[0.93]]}

`label` is class indices (see loopserve.monitor.live_metrics), one per row of the request; `x`
is its numeric inputs as float32 rows (empty rows when inputs are not kept).
"""

from __future__ import annotations

import glob
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import msgspec
import numpy as np


@dataclass(frozen=True)
class LabelledExamples:
    """Joined rows, oldest label first. Unpacks as `X, y, groups, ids, times`; `times` are
    when the labels were joined (unix seconds), which `since=` compares against."""

    X: np.ndarray  # [rows, input width] float32
    y: np.ndarray  # [rows] int64 class indices
    groups: np.ndarray  # [rows] object: the request's `group` parameter, or None
    ids: np.ndarray  # [rows] object: the request id (repeated for each row of a request)
    times: np.ndarray  # [rows] float64
    versions: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # [rows] version that answered
    predictions: np.ndarray = field(default_factory=lambda: np.empty((0, 0), np.float32))  # [rows, output width]
    predicted_at: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))

    def __iter__(self):
        return iter((self.X, self.y, self.groups, self.ids, self.times))

    def __len__(self) -> int:
        return len(self.y)

    def as_dict(self) -> dict[str, np.ndarray]:
        """Columns for a data snapshot: features as f0..fN-1 plus label, group, id, version,
        prediction columns (p0..) and both times."""
        out = {f"f{i}": self.X[:, i] for i in range(self.X.shape[1])}
        out.update(label=self.y, group=self.groups.astype(str), id=self.ids.astype(str), version=self.versions,
                   labelled_at=self.times, predicted_at=self.predicted_at)
        out.update({f"p{i}": self.predictions[:, i] for i in range(self.predictions.shape[1])})
        return out


class Joined(NamedTuple):
    """One joined request id: its rows, label(s) and prediction."""

    labelled_at: float
    predicted_at: float
    id: str
    version: int
    group: object
    x: np.ndarray
    y: np.ndarray
    prediction: np.ndarray


def examples_from(items: list[Joined], what: str) -> LabelledExamples:
    if not items:
        return LabelledExamples(np.empty((0, 0), np.float32), np.empty(0, np.int64), np.empty(0, object),
                                np.empty(0, object), np.empty(0, np.float64))
    widths = {it.x.shape[1] for it in items}
    if len(widths) > 1:
        raise ValueError(f"{what}: the labelled inputs have different widths {sorted(widths)} "
                         f"(versions with different inputs); ask for one version")
    rows = [len(it.y) for it in items]

    def repeat(values, dtype):  # one value per item -> one per row
        column = np.empty(len(values), dtype)
        column[:] = values
        return np.repeat(column, rows)

    return LabelledExamples(
        np.concatenate([it.x for it in items]).astype(np.float32, copy=False),
        np.concatenate([it.y for it in items]).astype(np.int64, copy=False),
        repeat([it.group for it in items], object), repeat([it.id for it in items], object),
        repeat([it.labelled_at for it in items], np.float64), repeat([it.version for it in items], np.int64),
        np.concatenate([it.prediction for it in items]).astype(np.float32, copy=False),
        repeat([it.predicted_at for it in items], np.float64))


class LabelledBuffer:
    """The most recent joined examples of one model, at most `capacity` rows and `max_bytes` of
    their arrays (the newest is kept whatever its size). Not thread-safe by itself: its owner
    holds a lock."""

    def __init__(self, capacity: int, max_bytes: int):
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.items: deque[Joined] = deque()
        self.rows = 0
        self.bytes = 0

    def add(self, item: Joined) -> None:
        self.items.append(item)
        self.rows += len(item.y)
        self.bytes += _nbytes(item)
        while (self.rows > self.capacity or self.bytes > self.max_bytes) and len(self.items) > 1:
            gone = self.items.popleft()
            self.rows -= len(gone.y)
            self.bytes -= _nbytes(gone)

    def select(self, since: float | None = None, version: int | None = None) -> list[Joined]:
        """Items labelled after `since` (all when None), of `version` (all when None)."""
        out = []
        for item in reversed(self.items):
            if since is not None and item.labelled_at <= since:
                break
            if version is None or item.version == version:
                out.append(item)
        out.reverse()
        return out


def _nbytes(item: Joined) -> int:
    return item.x.nbytes + item.y.nbytes + item.prediction.nbytes


class _Line(msgspec.Struct):
    id: str
    model: str
    version: int
    predicted_at: float
    labelled_at: float
    group: object
    label: list[int]
    x: list[list[float]]
    prediction: list[list[float]]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_Line)
_PREFIX, _SUFFIX = "labels-", ".jsonl"


def spill_path(directory: str | Path, model: str) -> Path:
    return Path(directory) / model.replace("/", "_")


class SpillWriter:
    """Appends joined examples of one model to its spill files. Thread-safe (one lock)."""

    def __init__(self, directory: str | Path, model: str, max_bytes: int):
        self.directory = spill_path(directory, model)
        self.model = model
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._file = None
        self._size = 0
        self._seq = 0
        self._closed = False

    def write(self, items: list[Joined]) -> bool:
        """Appends the items; False (nothing written) once the writer is closed: the model's
        new writer (a config change replaced this one) takes them, never a reopened file here."""
        if not items:
            return True
        lines = [_encoder.encode(_Line(it.id, self.model, it.version, it.predicted_at, it.labelled_at,
                                       _plain(it.group), it.y.tolist(), it.x.tolist(), it.prediction.tolist()))
                 + b"\n" for it in items]
        with self._lock:
            if self._closed:
                return False
            if self._file is None:
                self._open()
            for line in lines:
                if self._size and self._size + len(line) > self.max_bytes:
                    self._file.close()
                    self._seq += 1
                    self._open()
                self._file.write(line)
                self._size += len(line)
            self._file.flush()
        return True

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self._seq:
            existing = _spill_files(self.directory)
            self._seq = int(existing[-1].name[len(_PREFIX):-len(_SUFFIX)]) if existing else 1
        path = self.directory / f"{_PREFIX}{self._seq:06d}{_SUFFIX}"
        self._file = open(path, "ab")
        self._size = self._file.tell()
        if self._size and _last_byte(path) != b"\n":
            # A crash left half a line: end it, so the next line is not glued to it (the half
            # line stays unreadable and is skipped; the next one is whole).
            self._file.write(b"\n")
            self._size += 1

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._file is not None:
                self._file.close()
                self._file = None


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, 2)
        return f.read(1)


def _plain(group):
    return group if group is None or isinstance(group, (str, int, float, bool)) else str(group)


def _spill_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob(f"{_PREFIX}*{_SUFFIX}")
                  if p.name[len(_PREFIX):-len(_SUFFIX)].isdigit())


def spill_dirs(directories: str | Path | list) -> list[Path]:
    """The spill directories named by `directories`: one, or a list, each entry a directory or a
    glob pattern (`feedback/replica-*`: one directory per replica of a fleet), expanded now so
    replicas that come later are read too. A directory named twice (or matched by two patterns)
    is listed once."""
    entries = [directories] if isinstance(directories, (str, Path)) else list(directories)
    found: list[Path] = []
    seen: set[Path] = set()
    for entry in entries:
        text = str(entry)
        matches = sorted(Path(p) for p in glob.glob(text)) if glob.has_magic(text) else [Path(text)]
        for path in matches:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                found.append(path)
    return found


def read_spill(directory: str | Path | list, model: str, since: float | None = None,
               version: int | None = None, predicted_after: float | None = None) -> LabelledExamples:
    """Every example spilled for `model` under `directory` (the model's `feedback.spill_dir`; or
    several, see spill_dirs: a fleet's replicas each spill into their own), oldest file first:
    labelled after `since`, predicted after `predicted_after` and of `version` when given. An
    incomplete last line (being written) is skipped; a prediction (request id and prediction
    time) found in two directories is read once."""
    items = []
    seen: set[tuple[str, float]] = set()
    for root in spill_dirs(directory):
        for path in _spill_files(spill_path(root, model)):
            with open(path, "rb") as f:
                for raw in f:
                    if not raw.endswith(b"\n"):
                        break
                    try:
                        line = _decoder.decode(raw)
                    except msgspec.DecodeError:
                        continue
                    if (since is not None and line.labelled_at <= since) \
                            or (version is not None and line.version != version) \
                            or (predicted_after is not None and line.predicted_at <= predicted_after) \
                            or (line.id, line.predicted_at) in seen:
                        continue
                    seen.add((line.id, line.predicted_at))
                    width = len(line.x[0]) if line.x else 0
                    items.append(Joined(line.labelled_at, line.predicted_at, line.id, line.version, line.group,
                                        np.asarray(line.x, np.float32).reshape(len(line.label), width),
                                        np.asarray(line.label, np.int64),
                                        np.asarray(line.prediction, np.float32).reshape(len(line.label), -1)))
    return examples_from(items, f"spill of model '{model}' in {directory}")


__all__ = ["LabelledExamples", "LabelledBuffer", "SpillWriter", "read_spill", "spill_dirs", "spill_path"]
