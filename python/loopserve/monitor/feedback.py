"""Ground-truth feedback: predictions recorded by request id, labels joined to them later, and
what the joins give — live accuracy, precision and recall per version, and labelled examples
for retraining.

    store = FeedbackStore()                          # the server keeps one per repository
    track = store.track(model)                       # per request (cached per Model object)
    track.record(request_id, inputs, outputs, params)   # after a successful infer (bench/feedback.py)
    result = store.feedback("fraud", [("req-1", 1), ("req-2", [0, 1])])
    store.window_metrics("fraud", 2)                 # VersionFeedback: cumulative, current, windows
    X, y, groups, ids, times = store.labelled_examples("fraud", since=t)

Each served version has its own bounded record (loopserve.monitor.predictions); a label is
looked up in the records of every version of the model and joins the newest prediction with
that id. Answers per id: "joined"; "unknown" (never recorded for this model, or forgotten
long ago); "duplicate" (already labelled: the first label wins); "expired" (recorded, but
past `feedback.horizon_s` or evicted from the record); "invalid" (the label does not fit
the prediction, with the reason; the id can still be labelled).

Thread-safety: everything is safe from any thread. One lock per model guards its records,
metrics and labelled examples (held for a few microseconds per recorded request, and for the
join of one feedback request); the spill files have their own lock, and `feedback()` writes
them outside the model's lock.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
import weakref
from typing import NamedTuple

import msgspec
import numpy as np

from loopserve.errors import ModelNotFound
from loopserve.monitor.labelled import Joined, LabelledBuffer, LabelledExamples, SpillWriter, examples_from
from loopserve.monitor.live_metrics import LiveMetrics, PredictionRule, VersionFeedback
from loopserve.monitor.predictions import DUPLICATE, EXPIRED, LIVE, UNKNOWN, PredictionRecord, row_width

log = logging.getLogger("loopserve.feedback")

JOINED, INVALID = "joined", "invalid"
STATUSES = (JOINED, UNKNOWN, DUPLICATE, EXPIRED, INVALID)
MAX_VERSIONS = 32  # versions whose live metrics a model keeps (the highest, and the one last labelled)
JOIN_CHUNK = 1000  # labels joined per hold of a model's lock, for large feedback bodies (about 2 ms)
_SCALARS = (str, int, float, bool)


class ItemStatus(msgspec.Struct, omit_defaults=True, gc=False):  # untracked: a large body gets a million
    id: str
    status: str
    version: str | None = None  # the version that answered, when known
    reason: str | None = None  # why an invalid label was refused


class FeedbackResult(msgspec.Struct):
    model: str
    joined: int = 0
    unknown: int = 0
    duplicate: int = 0
    expired: int = 0
    invalid: int = 0
    items: list[ItemStatus] = []


class RecordState(msgspec.Struct):
    version: int
    entries: int  # request ids whose rows are still held, labelled or not (at most capacity_rows)
    capacity_rows: int
    recorded: int  # requests recorded, ever
    tombstones: int  # evicted ids still answered "expired"
    horizon_s: float
    input_width: int
    output: str
    dropped: int  # predictions the engine's tap could not hold until drained (workers > 1)


class FeedbackReport(msgspec.Struct):
    """GET /v2/models/{m}/feedback."""

    model: str
    labels: dict[str, dict[str, int]]  # version ("" when unknown) -> status -> ids
    versions: list[VersionFeedback]
    records: list[RecordState]
    labelled_rows: int
    spill_dir: str | None
    not_recorded: dict[str, str]  # version -> why its predictions are not recorded


class Layout(NamedTuple):
    output: str
    y_width: int
    x_layout: tuple[tuple[str, int, int], ...]
    batched: bool


class VersionTrack:
    """One version's record and prediction rule."""

    def __init__(self, owner: "ModelFeedback", version: int, config, layout: Layout):
        self.owner = owner
        self.version = version
        self.config = config
        self.layout = layout
        self.output = layout.output
        self.rule = PredictionRule(layout.y_width, config.threshold, list(config.classes))
        self.rec = PredictionRecord(record_rows(config, layout), config.horizon_s, layout.y_width,
                                    list(layout.x_layout), layout.batched)
        self.failed = False
        self.dropped = 0  # predictions the engine's tap could not hold until drained

    def count_dropped(self, n: int) -> None:
        if n and not self.dropped:
            log.warning("feedback predictions dropped: the engine's tap was full between drains",
                        extra={"model": self.owner.name, "version": self.version, "dropped": n})
        self.dropped += n

    def record(self, request_id: str, inputs: dict, outputs: dict, params: dict | None,
               at: float | None = None) -> None:
        """Records a successful prediction made `at` (unix seconds; default now); the infer
        hot path. Never raises."""
        y = outputs.get(self.output)
        if y is None or self.failed:
            return
        group = _one_group(params.get("group") if params else None)
        owner = self.owner
        try:
            with owner.lock:
                self.rec.add(request_id, owner.store.clock() if at is None else at, y, inputs, group)
        except Exception as e:  # a shape the config did not declare: stop recording, say so once
            self._fail(e)

    def record_block(self, ids: list[str], groups: list, times: list[float], y: np.ndarray, y_rows: np.ndarray,
                     inputs: dict, input_rows: dict) -> None:
        """Records many predictions at once (the engine's feedback tap: `record` for each in
        turn, where request k's tensors are its y_rows[k] rows of `y` and input_rows[name][k] of
        each input). Never raises."""
        if self.failed:
            return
        groups = [_one_group(g) for g in groups]
        owner = self.owner
        try:
            if self.layout.batched and all(np.array_equal(rows, y_rows) for rows in input_rows.values()):
                with owner.lock:
                    self.rec.add_many(ids, times, y_rows, y, inputs, groups)
                return
            # Unbatched (each request's tensors are whole) or inputs not row for row with y: one by one.
            y_parts = np.split(y, np.cumsum(y_rows)[:-1])
            x_parts = {name: np.split(a, np.cumsum(input_rows[name])[:-1]) for name, a in inputs.items()}
            with owner.lock:
                for k, request_id in enumerate(ids):
                    self.rec.add(request_id, times[k], y_parts[k], {n: p[k] for n, p in x_parts.items()}, groups[k])
        except Exception as e:  # a shape the config did not declare: stop recording, say so once
            self._fail(e)

    def _fail(self, e: Exception) -> None:
        self.failed = True
        self.owner.not_recorded[str(self.version)] = f"recording failed: {e}"
        log.error("feedback recording failed", extra={"model": self.owner.name, "version": self.version,
                                                      "error": str(e)})


class ModelFeedback:
    """Everything feedback keeps for one model name."""

    def __init__(self, store: "FeedbackStore", name: str, config):
        self.store = store
        self.name = name
        self.lock = threading.Lock()
        self.config = config
        self.tracks: dict[int, VersionTrack] = {}
        self.live: dict[int, LiveMetrics] = {}
        self.counts: dict[tuple[str, str], int] = {}
        self.labelled = LabelledBuffer(config.record_size, config.record_max_bytes)
        self.spill = SpillWriter(config.spill_dir, name, config.spill_max_bytes) if config.spill_dir else None
        self.not_recorded: dict[str, str] = {}
        self._pruner: threading.Timer | None = None  # prunes once the oldest retired record is past its horizon

    def configure(self, config) -> None:
        if config == self.config:
            return
        with self.lock:
            self.config = config
            self.labelled.capacity, self.labelled.max_bytes = config.record_size, config.record_max_bytes
            spill = self.spill
            if config.spill_dir is None or spill is None or spill.max_bytes != config.spill_max_bytes or \
                    str(spill.directory.parent) != str(config.spill_dir):
                if spill is not None:
                    spill.close()
                self.spill = SpillWriter(config.spill_dir, self.name, config.spill_max_bytes) \
                    if config.spill_dir else None

    def join(self, items: list[tuple[str, object]]) -> tuple[FeedbackResult, list[Joined]]:
        for flush in self.store.catch_up:
            flush()
        result = FeedbackResult(self.name)
        batches: dict[int, tuple[VersionTrack, list, list, list]] = {}  # version -> its joins
        joined: list[Joined] = []
        with self.lock:
            now = self.store.clock()
            for request_id, label in items:
                status, track, seq, predicted_at = self._find(request_id, now)
                reason = None
                if status == LIVE:
                    _, rows, group = track.rec.entry(seq)
                    truth = track.rule.labels(label, rows)
                    if isinstance(truth, str):
                        status, reason = INVALID, truth
                    else:
                        status = JOINED
                        track.rec.mark_labelled(request_id, seq)
                        batch = batches.setdefault(track.version, (track, [], [], []))
                        batch[1].append(seq)
                        batch[2].append(truth)
                        batch[3].append((request_id, predicted_at, group))
                version = str(track.version) if track is not None else None
                key = (version or "", status)
                self.counts[key] = self.counts.get(key, 0) + 1
                setattr(result, status, getattr(result, status) + 1)
                result.items.append(ItemStatus(request_id, status, version, reason))
            for track, seqs, truths, metas in batches.values():  # one numpy pass per version
                X, Y = track.rec.rows(seqs)
                predicted_at = np.repeat([meta[1] for meta in metas], [len(t) for t in truths])
                self._metrics(track).add(track.rule.predict(Y), np.concatenate(truths), now, predicted_at)
                offset = 0
                for (request_id, predicted_at, group), truth in zip(metas, truths):
                    end = offset + len(truth)
                    # copies: an item evicted from the buffer frees its rows, not a view of the join's
                    item = Joined(now, predicted_at, request_id, track.version, group, X[offset:end].copy(), truth,
                                  Y[offset:end].copy())
                    joined.append(item)
                    self.labelled.add(item)
                    offset = end
            self._prune(now)
        return result, joined

    def join_in_chunks(self, items: list[tuple[str, object]],
                       chunk: int = JOIN_CHUNK) -> tuple[FeedbackResult, list[Joined]]:
        """join, `chunk` labels at a time, for a large feedback body on a worker thread: the lock
        (which every recorded prediction takes) is held a few milliseconds at a time."""
        result, joined = FeedbackResult(self.name), []
        for start in range(0, len(items), chunk):
            part, part_joined = self.join(items[start:start + chunk])
            for status in STATUSES:
                setattr(result, status, getattr(result, status) + getattr(part, status))
            result.items += part.items
            joined += part_joined
        return result, joined

    def _find(self, request_id: str, now: float):
        """The answer of the most recent prediction recorded with this id, whichever version
        made it and whether or not it is still held (an evicted one answers "expired" or
        "duplicate": the label is not given to an older prediction of another version)."""
        best = (UNKNOWN, None, None, 0.0)
        for track in self.tracks.values():
            status, seq, predicted_at = track.rec.lookup(request_id, now)
            if status != UNKNOWN and (best[1] is None or predicted_at > best[3]):
                best = (status, track, seq, predicted_at)
        return best

    def _metrics(self, track: VersionTrack) -> LiveMetrics:
        live = self.live.get(track.version)
        if live is None or live.kind != track.rule.kind:
            live = self.live[track.version] = LiveMetrics(track.version, track.rule.kind, track.config.window_labels,
                                                          track.config.history, track.config.window_s)
            # The lowest *other* versions make room: a late label for an old version must count.
            for old in sorted(v for v in self.live if v != track.version)[:-(MAX_VERSIONS - 1)]:
                del self.live[old]
        live.window_labels = track.config.window_labels
        if live.window_s != track.config.window_s:  # windows of another width: start again
            live.window_s, live.by_time = track.config.window_s, {}
        return live

    def _prune(self, now: float) -> None:
        """Drops the records of versions that no longer serve and whose entries are all past
        the horizon (their metrics stay)."""
        serving = {t.version for t in self.store.serving_tracks(self.name)}
        for version, track in list(self.tracks.items()):
            if version not in serving and track.rec.last_time < now - track.config.horizon_s:
                del self.tracks[version]

    def prune_when_due(self) -> None:
        """Prunes now, and again when the next retired version's record passes its horizon: with
        no label coming, nothing else would. With `lock` held; on a version's retirement."""
        now = self.store.clock()
        self._prune(now)
        serving = {t.version for t in self.store.serving_tracks(self.name)}
        due = [t.rec.last_time + t.config.horizon_s for v, t in self.tracks.items() if v not in serving]
        if self._pruner is not None:
            self._pruner.cancel()
            self._pruner = None
        if due:
            self._pruner = threading.Timer(max(0.0, min(due) - now) + 0.05, self._prune_timer)
            self._pruner.daemon = True
            self._pruner.start()

    def _prune_timer(self) -> None:
        with self.lock:
            self.prune_when_due()


class _RandomIds:
    """Request ids of 128 random bits from the OS's CSPRNG, fetched 256 at a time: one
    getrandom call per 256 requests instead of one each (a syscall was 2% of a one-process
    server's loop at c=64). Thread-safe (a lock around the buffer)."""

    BATCH = 256

    def __init__(self):
        self._lock = threading.Lock()
        self._hex = ""
        self._at = 0

    def next(self) -> str:
        with self._lock:
            if self._at >= len(self._hex):
                self._hex, self._at = secrets.token_hex(16 * self.BATCH), 0
            start = self._at
            self._at = start + 32
            return self._hex[start:start + 32]


_random_ids = _RandomIds()
# A forked child must not hand out the ids left in its parent's buffer.
os.register_at_fork(after_in_child=lambda: setattr(_random_ids, "_hex", ""))


class FeedbackStore:
    """The feedback of every model of one server. `clock` (unix seconds) is injectable for tests."""

    def __init__(self, clock=time.time):
        self.clock = clock
        self.models: dict[str, ModelFeedback] = {}
        self._fast: dict[int, tuple[weakref.ref, VersionTrack | None]] = {}  # id(Model) -> its track
        self._lock = threading.Lock()
        # Called before labels join: predictions recorded elsewhere first (with workers > 1, the
        # engine's native taps), so that a label never arrives ahead of its own prediction.
        self.catch_up: list = []

    # -- the hot path ---------------------------------------------------------------------

    def track(self, model) -> VersionTrack | None:
        """The record of this Model object's version; None when feedback is off for it."""
        cached = self._fast.get(id(model))
        if cached is not None and cached[0]() is model:
            return cached[1]
        return self._track(model)

    def untrack(self, model) -> None:
        """Forgets this Model object (a retired version): its record stays until its horizon,
        so labels for its earlier predictions still join. Records of retired versions already
        past their horizon go now, the others once they are (a timer)."""
        with self._lock:
            cached = self._fast.get(id(model))
            if cached is not None and cached[0]() is model:
                del self._fast[id(model)]
            mf = self.models.get(model.name)
        if mf is not None:
            with mf.lock:
                mf.prune_when_due()

    new_id = staticmethod(lambda: _random_ids.next())

    def _track(self, model) -> VersionTrack | None:
        config = model.config.feedback
        key = id(model)
        with self._lock:
            track = None
            if config.enabled:
                mf = self.models.get(model.name)
                if mf is None:
                    mf = self.models[model.name] = ModelFeedback(self, model.name, config)
                mf.configure(config)
                layout = _layout(model, config)
                if isinstance(layout, str):
                    mf.not_recorded[str(model.version)] = layout
                    log.warning("feedback cannot record this version", extra={
                        "model": model.name, "version": model.version, "reason": layout})
                else:
                    with mf.lock:
                        track = mf.tracks.get(model.version)
                        if track is None or track.config != config or track.layout != layout:
                            track = mf.tracks[model.version] = VersionTrack(mf, model.version, config, layout)
                        mf.not_recorded.pop(str(model.version), None)

            def forget(ref, key=key, fast=self._fast):
                if fast.get(key, (None,))[0] is ref:
                    del fast[key]

            self._fast[key] = (weakref.ref(model, forget), track)
        return track

    def serving_tracks(self, name: str) -> list[VersionTrack]:
        """Tracks of live Model objects of `name`."""
        return [t for ref, t in list(self._fast.values()) if t is not None and t.owner.name == name and ref() is not None]

    # -- labels ---------------------------------------------------------------------------

    def model(self, name: str) -> ModelFeedback:
        mf = self.models.get(name)
        if mf is None:
            raise ModelNotFound(f"model '{name}' has recorded no predictions for feedback (unknown model, "
                                f"no request yet, or feedback.enabled: false in its config)")
        return mf

    def join(self, name: str, items: list[tuple[str, object]]) -> tuple[FeedbackResult, list[Joined]]:
        """Joins labels `[(request id, label or [labels])]`; the joined examples still to be
        spilled come back too (see `spill`)."""
        return self.model(name).join(items)

    def spill(self, name: str, joined: list[Joined]) -> None:
        """Appends joined examples to the model's spill files, if it has a spill_dir. Any thread."""
        mf = self.model(name)
        writer = mf.spill
        # A writer closed meanwhile (a config change replaced it) refuses: its successor writes.
        while writer is not None and joined and not writer.write(joined):
            writer = mf.spill if mf.spill is not writer else None

    def feedback(self, name: str, items: list[tuple[str, object]]) -> FeedbackResult:
        """join + spill, for Python callers."""
        result, joined = self.join(name, items)
        self.spill(name, joined)
        return result

    # -- what the joins give --------------------------------------------------------------

    def window_metrics(self, name: str, version: int, last: int | None = None) -> VersionFeedback | None:
        """A version's live metrics (None before its first label): every label so far
        (`cumulative`), the window filling now (`current`), and the last closed windows."""
        mf = self.models.get(name)
        if mf is None:
            return None
        with mf.lock:
            live = mf.live.get(int(version))
            return live.snapshot(last) if live is not None else None

    def live_metrics(self, name: str, last: int | None = None) -> dict[int, VersionFeedback]:
        """Every labelled version's live metrics."""
        mf = self.models.get(name)
        if mf is None:
            return {}
        with mf.lock:
            return {v: live.snapshot(last) for v, live in sorted(mf.live.items())}

    def labelled_examples(self, name: str, since: float | None = None,
                          version: int | None = None) -> LabelledExamples:
        """The joined examples held in memory (at most `feedback.record_size` rows, the most
        recent), labelled after `since` (unix seconds), of one version or all."""
        mf = self.model(name)
        with mf.lock:
            items = mf.labelled.select(since, version)
        return examples_from(items, f"model '{name}'")

    def report(self, name: str, last: int | None = None) -> FeedbackReport:
        mf = self.model(name)
        with mf.lock:
            labels: dict[str, dict[str, int]] = {}
            for (version, status), n in sorted(mf.counts.items()):
                labels.setdefault(version, {})[status] = n
            records = [RecordState(v, t.rec.live_entries(), t.rec.capacity, t.rec.seq, len(t.rec.tombstones), t.rec.horizon_s,
                                   t.rec.x_width, t.output, t.dropped) for v, t in sorted(mf.tracks.items())]
            versions = [live.snapshot(last) for _, live in sorted(mf.live.items())]
            return FeedbackReport(name, labels, versions, records, mf.labelled.rows, mf.config.spill_dir,
                                  dict(mf.not_recorded))

    def dropped_counts(self) -> list[tuple[str, str, int]]:
        """(model, version, predictions dropped before the record) per version; for Prometheus."""
        out = []
        for name, mf in list(self.models.items()):
            with mf.lock:
                out += [(name, str(v), t.dropped) for v, t in sorted(mf.tracks.items())]
        return out

    def label_counts(self) -> list[tuple[str, str, str, int]]:
        """(model, version, status, ids) for every count; for Prometheus."""
        out = []
        for name, mf in list(self.models.items()):
            with mf.lock:
                out += [(name, version, status, n) for (version, status), n in sorted(mf.counts.items())]
        return out


def _one_group(group):
    """A request's group as the record keeps it: a scalar, or the text of anything else."""
    return group if group is None or type(group) in _SCALARS else str(group)


def record_rows(config, layout: Layout) -> int:
    """Rows the version's record holds: `record_size`, or fewer when that many rows of its
    predictions and kept inputs would take more than `record_max_bytes` (one at least)."""
    row_bytes = 4 * (layout.y_width + sum(width for _, _, width in layout.x_layout))
    return max(1, min(config.record_size, config.record_max_bytes // row_bytes))


def _layout(model, config) -> Layout | str:
    """Where a version's prediction and input rows are, or why they cannot be recorded."""
    batched = model.config.max_batch_size > 0
    if not model.outputs:
        return "the model declares no outputs"
    name = config.output or model.outputs[0].name
    spec = next((t for t in model.outputs if t.name == name), None)
    if spec is None:
        return f"feedback.output '{name}' is not an output (outputs: {', '.join(t.name for t in model.outputs)})"
    y_width = row_width(spec.dims)
    if spec.datatype == "BYTES" or y_width is None or y_width == 0:
        return f"output '{name}' is {spec.datatype} {list(spec.dims)}: feedback needs numeric outputs of fixed size"
    x_layout, offset = [], 0
    if config.keep_inputs:
        for t in model.inputs:
            width = row_width(t.dims)
            if t.datatype == "BYTES":
                continue
            if width is None:  # variable-size inputs are not kept
                x_layout, offset = [], 0
                break
            x_layout.append((t.name, offset, width))
            offset += width
    return Layout(name, y_width, tuple(x_layout), batched)
