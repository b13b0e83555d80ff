"""The rollback hook: at the end of a canary window, promote the canary or roll it back,
from live per-version metrics. The closed loop will add accuracy and drift to the evidence."""

from __future__ import annotations

from typing import Literal

import msgspec


class VersionMetrics(msgspec.Struct, frozen=True):
    """What one version did during the window."""

    version: int
    requests: int
    errors: int  # failed in the model or timed out in the queue
    p99_s: float  # from the server's latency histogram (a bucket's upper bound)
    # That histogram's per-bucket counts (server/latency.py's bounds, then +Inf): the pipeline
    # takes the difference of two readings, so both versions' p99 cover the same window.
    latency_counts: tuple[int, ...] = ()

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class Decision(msgspec.Struct, frozen=True):
    action: Literal["promote", "rollback", "wait"]
    reason: str


class CanaryRule(msgspec.Struct, frozen=True):
    """Roll back when the canary errs more, or is slower at p99, than the stable version by
    more than the margins; promote when it has seen enough requests and is within them."""

    min_requests: int = 100  # the canary's requests before any verdict
    max_error_rate_increase: float = 0.01  # absolute, e.g. 1% more failed requests
    # canary p99 / stable p99. p99 is a bucket's upper bound and the buckets step by 2-2.5x, so
    # 3.0 lets a canary land one bucket above the stable version (noise on a busy machine) and
    # rolls it back from two buckets (4x or more) on; a limit under 2 would roll back at any step.
    max_p99_ratio: float = 3.0

    def decide(self, stable: VersionMetrics, canary: VersionMetrics) -> Decision:
        if canary.requests < self.min_requests:
            return Decision("wait", f"version {canary.version} has {canary.requests} requests; "
                                    f"the rule needs {self.min_requests}")
        excess = canary.error_rate - stable.error_rate
        if excess > self.max_error_rate_increase:
            return Decision("rollback", f"version {canary.version} fails {canary.error_rate:.2%} of requests, "
                                        f"version {stable.version} {stable.error_rate:.2%} (allowed: "
                                        f"+{self.max_error_rate_increase:.2%})")
        if stable.p99_s > 0 and canary.p99_s / stable.p99_s > self.max_p99_ratio:
            return Decision("rollback", f"version {canary.version} p99 {canary.p99_s * 1e3:.2f} ms is "
                                        f"{canary.p99_s / stable.p99_s:.2f}x version {stable.version}'s "
                                        f"{stable.p99_s * 1e3:.2f} ms (allowed: {self.max_p99_ratio}x)")
        return Decision("promote", f"version {canary.version}: {canary.requests} requests, errors "
                                   f"{canary.error_rate:.2%} (stable {stable.error_rate:.2%}), p99 "
                                   f"{canary.p99_s * 1e3:.2f} ms (stable {stable.p99_s * 1e3:.2f} ms)")
