"""The prediction record: one model version's recent predictions by request id, so that ground
truth sent later (POST /v2/models/{m}/feedback) can be joined to what the version answered.

Bounded three ways, every bound O(1) per insert:

- **rows**: the prediction rows (and, when kept, the input rows) live in two preallocated
  float32 ring buffers of `capacity` rows; a request of n rows takes n consecutive slots, and
  whatever older entries those slots held are evicted first. The id index holds at most
  `capacity` entries, since each has at least one row.
- **age**: an insert first evicts entries older than `horizon_s`; a lookup treats an entry
  past the horizon as evicted too, so the answer does not depend on traffic.
- **tombstones**: an evicted id is remembered (its version and whether it was labelled) in a
  FIFO of at most `capacity` ids, so a late label is answered "expired" (or "duplicate"),
  not "unknown".

Memory: capacity x (input width + output width) x 4 bytes for the rings (pages are touched
only as they fill), plus about 250 bytes of index and tombstone per entry.

Not thread-safe by itself: its owner (loopserve.monitor.feedback) holds a lock around every call.
"""

from __future__ import annotations

from collections import deque

import numpy as np

# Lookup answers
LIVE, EXPIRED, DUPLICATE, UNKNOWN = "live", "expired", "duplicate", "unknown"


class Entry:
    """One recorded request: its rows are slots [start, start + rows) of the rings (modulo
    the capacity)."""

    __slots__ = ("id", "time", "start", "rows", "group", "labelled")

    def __init__(self, id: str, time: float, start: int, rows: int, group):
        self.id = id
        self.time = time
        self.start = start
        self.rows = rows
        self.group = group
        self.labelled = False


class PredictionRecord:
    """Recent predictions of one model version, by request id.

    `x_layout` is [(input name, column offset, width)]: the numeric inputs laid side by side
    as one float32 row per request row (empty: inputs are not kept).
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
        self.index: dict[str, Entry] = {}
        self.order: deque[Entry] = deque()  # by insertion, which is by slot and by time
        self.head = 0  # rows written, ever (slot = head % capacity)
        self.tombstones: dict[str, Entry] = {}
        self.tombstone_order: deque[Entry] = deque()
        self.last_time = 0.0
        self.recorded = 0
        self.evicted = 0

    def add(self, id: str, now: float, y: np.ndarray, inputs: dict, group) -> None:
        """Records one request's prediction rows `y` (and its `inputs` rows); the hot path."""
        n = y.shape[0] if self.batched else 1
        capacity = self.capacity
        if n == 0 or n > capacity:
            return
        start = self.head
        slot = start % capacity
        if slot + n > capacity:  # the rows would wrap: skip to slot 0
            start += capacity - slot
            slot = 0
        end = start + n
        order = self.order
        if order:
            floor, oldest = end - capacity, now - self.horizon_s
            while order and (order[0].start < floor or order[0].time < oldest):
                self._evict(order.popleft())
        if self.batched and y.ndim == 2:
            self.Y[slot:slot + n] = y
        else:
            self.Y[slot:slot + n] = y.reshape(n, -1)
        for name, offset, width in self.x_layout:
            x = inputs[name]
            if x.ndim != 2 or not self.batched:
                x = x.reshape(n, -1)
            self.X[slot:slot + n, offset:offset + width] = x
        entry = Entry(id, now, start, n, group)
        self.index[id] = entry
        order.append(entry)
        self.head = end
        self.last_time = now
        self.recorded += 1

    def _evict(self, entry: Entry) -> None:
        self.evicted += 1
        if self.index.get(entry.id) is not entry:
            return  # superseded: the id was used again by a later request
        del self.index[entry.id]
        self.tombstones[entry.id] = entry
        self.tombstone_order.append(entry)
        if len(self.tombstone_order) > self.capacity:
            old = self.tombstone_order.popleft()
            if self.tombstones.get(old.id) is old:
                del self.tombstones[old.id]

    def lookup(self, id: str, now: float) -> tuple[str, Entry | None]:
        """(LIVE, entry) when the id can be labelled now; (EXPIRED | DUPLICATE, entry) when it
        was recorded but is past the horizon or already labelled; (UNKNOWN, None) otherwise."""
        entry = self.index.get(id)
        if entry is not None:
            if entry.time < now - self.horizon_s:
                return EXPIRED, entry
            return (DUPLICATE if entry.labelled else LIVE), entry
        entry = self.tombstones.get(id)
        if entry is not None:
            return (DUPLICATE if entry.labelled else EXPIRED), entry
        return UNKNOWN, None

    def rows(self, entry: Entry) -> tuple[np.ndarray, np.ndarray]:
        """Copies of a live entry's (inputs, predictions) rows."""
        slot = entry.start % self.capacity
        return self.X[slot:slot + entry.rows].copy(), self.Y[slot:slot + entry.rows].copy()

    def __len__(self) -> int:
        return len(self.index)


def row_width(dims) -> int | None:
    """Values per row of a tensor with these dims (the batch dimension excluded); None when
    a dimension is variable."""
    if any(d < 0 for d in dims):
        return None
    return int(np.prod(dims, dtype=np.int64)) if dims else 1
