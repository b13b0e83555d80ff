"""The prediction record: one model version's recent predictions by request id, so that ground
truth sent later (POST /v2/models/{m}/feedback) can be joined to what the version answered.

Bounded by count, O(1) per insert with no per-entry eviction work:

- **rows**: the prediction rows (and, when kept, the input rows) live in two preallocated
  float32 ring buffers of `capacity` rows; a request of n rows takes the next n slots. An
  entry whose rows have been overwritten, or whose metadata slot (its sequence number modulo
  `capacity`) has been reused, is gone: at most `capacity` entries can be labelled.
- **ids**: the id index is generational. New ids go into the current dict; once `capacity`
  requests have gone into it, it becomes the previous one, and the previous becomes the
  tombstones (the oldest generation is dropped whole). So at most 3 x `capacity` ids are held,
  an id evicted less than `capacity` requests ago is still known, and its label is answered
  "expired" (or "duplicate" when it was labelled), not "unknown".
- **when**: every id held was recorded within the last 3 x `capacity` requests, so a ring of
  that many prediction times, by sequence number, still knows when an evicted id was predicted:
  across versions a label meets the most recent prediction of its id (an evicted one answers
  "expired"), never an older one that another version still holds.
- **age**: a lookup answers "expired" for an entry older than `horizon_s`, so the answer does
  not depend on traffic (memory is bounded by the counts above).

Cheap on the infer path (bench/feedback.py: about 2 µs a request in a tight loop, 4-5 µs
measured inside the server, where caches are cold): an insert is one dict store and a few list
stores, and allocates nothing the garbage collector tracks (a collection never walks the
record's entries). Rows are not copied at once: the arrays of the last few requests are kept
by reference and copied into the rings together (one numpy call per ring), when 64 are
pending, when the ring wraps, or before any read. Dropping the oldest id generation (once per
`capacity` requests) frees its ids at once: about 1.5 ms for 100,000 ids.

Memory: capacity x (input width + output width) x 4 bytes for the rings (pages are touched
only as they fill), plus about 300 bytes of ids and metadata per entry, and 24 bytes for each
of the 3 x capacity prediction times.

Not thread-safe by itself: its owner (loopserve.monitor.feedback) holds a lock around every call.
"""

from __future__ import annotations

import numpy as np

# Lookup answers
LIVE, EXPIRED, DUPLICATE, UNKNOWN = "live", "expired", "duplicate", "unknown"
PENDING = 64  # requests whose rows wait to be copied into the rings together


class PredictionRecord:
    """Recent predictions of one model version, by request id.

    `x_layout` is [(input name, column offset, width)]: the numeric inputs laid side by side
    as one float32 row per request row (empty: inputs are not kept). An entry is named by its
    sequence number `seq`; its metadata sits at `seq % capacity` of the lists below, its
    prediction time at `seq % (3 * capacity)` of `times`. The id dicts map id -> seq, or
    -1 - seq once the entry was labelled.
    """

    def __init__(self, capacity: int, horizon_s: float, y_width: int, x_layout: list[tuple[str, int, int]],
                 batched: bool = True):
        self.capacity = capacity
        self.horizon_s = horizon_s
        self.batched = batched
        self.y_width = y_width
        self.x_layout = x_layout
        self.x_width = sum(w for _, _, w in x_layout)
        self.Y = np.empty((capacity, y_width), np.float32)
        self.X = np.empty((capacity, self.x_width), np.float32)
        # entry metadata, by seq % capacity
        self.times: list = [0.0] * (3 * capacity)  # as long as the ids of the 3 generations below
        self.starts: list = [0] * capacity  # first row, counted from the first row ever written
        self.nrows: list = [0] * capacity
        self.groups: list = [None] * capacity
        self.index: dict[str, int] = {}  # the current id generation
        self.previous: dict[str, int] = {}
        self.tombstones: dict[str, int] = {}  # the oldest generation: evicted ids
        self.seq = 0  # entries ever added
        self.head = 0  # rows ever written (or skipped at a wrap)
        # rows not yet copied into the rings: contiguous slots from _pending_slot
        self._pending_y: list = []
        self._pending_x: list = []
        self._pending_slot = 0
        self._pending_rows = 0
        self.last_time = 0.0

    def add(self, id: str, now: float, y: np.ndarray, inputs: dict, group) -> None:
        """Records one request's prediction rows `y` (and its `inputs` rows); the hot path."""
        n = y.shape[0] if self.batched else 1
        capacity = self.capacity
        if n == 0 or n > capacity:
            return
        start = self.head
        slot = start % capacity
        pending = self._pending_y
        if slot + n > capacity:  # the rows would wrap: skip to slot 0
            self.flush()
            pending = self._pending_y
            start += capacity - slot
            slot = 0
        elif pending and (len(pending) >= PENDING or slot != self._pending_slot + self._pending_rows):
            self.flush()  # 64 pending, or the last rows ended exactly at the ring's end
            pending = self._pending_y
        if not pending:
            self._pending_slot = slot
        pending.append(_own(y))
        # Only the recorded inputs, and copies of them: a request's arrays are views of its body
        # (or a batch's outputs), which must not be kept alive (up to 64 MiB each) while they wait.
        self._pending_x.append({name: _own(inputs[name]) for name, _, _ in self.x_layout} if self.x_layout else None)
        self._pending_rows += n
        seq = self.seq
        i = seq % capacity
        self.times[seq % (3 * capacity)] = now
        self.starts[i] = start
        self.nrows[i] = n
        self.groups[i] = group
        index = self.index
        index[id] = seq
        if i == capacity - 1:  # `capacity` requests into this generation (their ids may repeat)
            self.tombstones, self.previous, self.index = self.previous, index, {}
        self.seq = seq + 1
        self.head = start + n
        self.last_time = now

    def add_many(self, ids: list[str], times: list[float], counts: np.ndarray, y: np.ndarray, inputs: dict,
                 groups: list) -> None:
        """Records len(ids) requests at once, as add() would one after another: request k's rows
        are the next counts[k] rows of `y` and of each `inputs` array (batched records only).
        A few numpy calls and C-level list and dict stores per run of requests that neither
        wraps the ring nor crosses an id generation: the engine's feedback drain hands over
        thousands of requests a turn, and Python per request held the GIL its batches need."""
        if not self.batched:
            raise ValueError("add_many records batched predictions; add() the others one by one")
        counts = np.asarray(counts, np.int64)
        if counts.size and (counts.min() <= 0 or counts.max() > self.capacity):  # add() skips these
            ends = np.cumsum(counts)
            for k, (n, end) in enumerate(zip(counts.tolist(), ends.tolist())):
                row = slice(end - n, end)
                self.add(ids[k], times[k], y[row], {name: a[row] for name, a in inputs.items()}, groups[k])
            return
        self.flush()
        capacity = self.capacity
        ends = np.cumsum(counts)
        y = y.reshape(len(y), self.y_width)
        xs = [(inputs[name].reshape(len(inputs[name]), width), offset, width) for name, offset, width in self.x_layout]
        k, row, total = 0, 0, len(ids)
        while k < total:
            start = self.head
            slot = start % capacity
            room = capacity - slot
            fit = int(np.searchsorted(ends[k:], row + room, side="right"))  # requests whose rows fit before the end
            if fit == 0:  # the next request's rows would wrap: skip to slot 0, as add() does
                self.head = start + room
                continue
            seq = self.seq
            i = seq % capacity
            fit = min(fit, capacity - i)  # up to the end of this id generation
            e = k + fit
            rows = int(ends[e - 1]) - row
            with np.errstate(over="ignore"):  # a float64 past float32's range is kept as ±inf, quietly
                self.Y[slot:slot + rows] = y[row:row + rows]
                for x, offset, width in xs:
                    self.X[slot:slot + rows, offset:offset + width] = x[row:row + rows]
            t = seq % (3 * capacity)
            self.times[t:t + fit] = times[k:e]
            self.starts[i:i + fit] = (ends[k:e] - counts[k:e] - row + start).tolist()
            self.nrows[i:i + fit] = counts[k:e].tolist()
            self.groups[i:i + fit] = groups[k:e]
            self.index.update(zip(ids[k:e], range(seq, seq + fit)))
            if i + fit == capacity:  # `capacity` requests into this generation
                self.tombstones, self.previous, self.index = self.previous, self.index, {}
            self.seq = seq + fit
            self.head = start + rows
            self.last_time = times[e - 1]
            k, row = e, row + rows

    def flush(self) -> None:
        """Copies the pending rows into the rings."""
        ys = self._pending_y
        if not ys:
            return
        xs = self._pending_x
        s = self._pending_slot
        e = s + self._pending_rows
        self._pending_y = []
        self._pending_x = []
        self._pending_rows = 0
        batched = self.batched
        np.concatenate([y if batched and y.ndim == 2 else y.reshape(-1 if batched else 1, self.y_width) for y in ys],
                       out=self.Y[s:e], casting="unsafe")
        for name, offset, width in self.x_layout:
            parts = [x[name] for x in xs]
            np.concatenate([a if batched and a.ndim == 2 else a.reshape(-1 if batched else 1, width) for a in parts],
                           out=self.X[s:e, offset:offset + width], casting="unsafe")

    def _held(self, seq: int) -> bool:
        """Whether an entry's metadata and rows are still in the record."""
        return seq >= self.seq - self.capacity and self.starts[seq % self.capacity] >= self.head - self.capacity

    def lookup(self, id: str, now: float) -> tuple[str, int | None, float]:
        """(answer, seq, prediction time): LIVE when the id can be labelled now (seq names the
        entry); EXPIRED or DUPLICATE when it was recorded but is past the horizon, evicted or
        already labelled (seq None when evicted, the time still known); (UNKNOWN, None, 0.0)
        otherwise. The newest generation wins."""
        for generation in (self.index, self.previous, self.tombstones):
            value = generation.get(id)
            if value is not None:
                break
        else:
            return UNKNOWN, None, 0.0
        labelled = value < 0
        seq = -1 - value if labelled else value
        t = self.times[seq % (3 * self.capacity)]
        if not self._held(seq):
            return (DUPLICATE if labelled else EXPIRED), None, t
        if labelled:
            return DUPLICATE, seq, t
        return (EXPIRED if t < now - self.horizon_s else LIVE), seq, t

    def entry(self, seq: int) -> tuple[float, int, object]:
        """(prediction time, rows, group) of a held entry."""
        i = seq % self.capacity
        return self.times[seq % (3 * self.capacity)], self.nrows[i], self.groups[i]

    def mark_labelled(self, id: str, seq: int) -> None:
        for generation in (self.index, self.previous, self.tombstones):
            if generation.get(id) == seq:
                generation[id] = -1 - seq
                return

    def rows(self, seqs: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Copies of held entries' (inputs, predictions) rows, in the order given."""
        self.flush()
        capacity = self.capacity
        slots = [np.arange(self.starts[s % capacity] % capacity, self.starts[s % capacity] % capacity
                           + self.nrows[s % capacity]) for s in seqs]
        take = np.concatenate(slots) if slots else np.empty(0, np.int64)
        return self.X[take], self.Y[take]

    def live_entries(self) -> int:
        """Entries still held, labelled or not (ignoring the horizon); at most `capacity`."""
        return sum(1 for g in (self.index, self.previous) for v in g.values() if self._held(v if v >= 0 else -1 - v))

    def __len__(self) -> int:
        """Ids held, in the current and previous generations (at most 2 x capacity)."""
        return len(self.index) + len(self.previous)


def _own(array: np.ndarray) -> np.ndarray:
    """The array itself when it owns its memory, else a copy of just its elements."""
    return array if array.base is None else array.copy()


def row_width(dims) -> int | None:
    """Values per row of a tensor with these dims (the batch dimension excluded); None when
    a dimension is variable."""
    if any(d < 0 for d in dims):
        return None
    return int(np.prod(dims, dtype=np.int64)) if dims else 1
