"""The end-to-end latency histogram of the infer route, observed once per request."""

from __future__ import annotations

import bisect

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LatencyHistogram:
    """A histogram cheap enough for every request: one bisect and two additions, no lock.

    prometheus_client's Histogram takes a lock per bucket it touches; this one is written
    only from the event loop thread, and read when /metrics is served on that same thread.
    """

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def quantile(self, q: float) -> float:
        """The upper bound of the bucket holding the q-quantile (inf past the last bound)."""
        return bucket_quantile(self.counts, q, self.bounds)

    def buckets(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts):
            total += count
            out.append((bound, total))
        return out


def bucket_quantile(counts, q: float, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> float:
    """The upper bound of the bucket holding the q-quantile of per-bucket counts (the last
    count is +Inf's); 0 when there are none. Counts may be the difference of two readings of
    one histogram: the quantile of what happened between them."""
    total = sum(counts)
    if total <= 0:
        return 0.0
    seen = 0
    for bound, count in zip((*bounds, float("inf")), counts):
        seen += count
        if seen >= q * total:
            return bound
    return float("inf")
