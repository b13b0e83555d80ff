"""Overload: refuse at once what this process cannot serve in time, before decoding it.

Past saturation a quick model's requests do not wait in the batcher's queue (where
`max_queue_wait_us` refuses them) but in front of the event loop: each turn reads and answers
every connection that is ready, so a turn grows with the number of clients and so does every
request's wait, in the kernel's socket buffer until the loop comes round to it. That wait is
what `LoopLag` measures: a timer is due every `budget / 2`; how late it runs (or, when it is
overdue, how overdue it is now) is how long a request that arrived just after the loop last
looked has been waiting. While that is over the budget (`http.overload_wait_ms`), an infer
request is answered 429 with `Retry-After` from its head, before its body is decoded: a
refusal costs a parse and one write, a fraction of a served request, so the turns shorten
until the requests that are taken are served within the budget again.

Refusing buys nothing when few clients are connected (a stall of the machine, not a backlog of
ours: the next turn drains them anyway), so a process refuses only while it holds at least
`http.overload_min_connections` open connections. (Not requests in flight: a quick model's
requests run at once on the loop, so past saturation the backlog is in the sockets, and the
process holds about one request at a time.) Which request is refused is whichever arrives
while the loop is late, from any connection: no connection is favoured.

Thread-safety: the event loop's thread.
"""

from __future__ import annotations

import asyncio

from loopserve.errors import RETRY_AFTER, LoopserveError
from loopserve.server.http_errors import error_body


def overload_message(budget_ms: float) -> str:
    """What a refused request is told (the engine's native HTTP path says the same)."""
    return (f"the server is overloaded: requests wait more than {budget_ms:g} ms before it can read them "
            f"(http.overload_wait_ms); retry later")


class Overloaded(LoopserveError):
    """This process's event loop runs later than http.overload_wait_ms behind its requests."""

    status = 429
    headers = RETRY_AFTER


class LoopLag:
    """How far the running event loop is behind, and whether to refuse an infer request now."""

    def __init__(self, budget_ms: float, min_connections: int, refused: dict[str, int] | None = None):
        self.budget_s = budget_ms / 1e3
        self.period_s = self.budget_s / 2
        self.min_connections = min_connections
        # The process's open connections: uvicorn's set, which the fast path's protocol hands
        # over (server/fastpath.py); until then (an app served by something else), the infer
        # requests handed off and not yet finished, which the handler counts.
        self.connections = None
        self.in_flight = 0
        self.refused = {} if refused is None else refused  # by model name (ServerMetrics exposes it)
        self.lag_s = 0.0  # how late the last tick ran
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0
        message = overload_message(budget_ms)
        self.answer = (429, [(b"content-type", b"application/json"), *RETRY_AFTER], error_body(message))
        self._message = message

    def check(self, name: str) -> None:
        """Raises Overloaded when `name`'s request should be refused now (from its head)."""
        loop = self._loop
        if loop is None:  # the first request starts the ticks, on the loop that serves
            self._loop = loop = asyncio.get_running_loop()
            self._due = loop.time() + self.period_s
            loop.call_at(self._due, self._tick)
        busy = self.in_flight if self.connections is None else len(self.connections)
        if busy >= self.min_connections and max(self.lag_s, loop.time() - self._due) > self.budget_s:
            self.refused[name] = self.refused.get(name, 0) + 1
            raise Overloaded(self._message)

    def _tick(self) -> None:
        now = self._loop.time()
        self.lag_s = now - self._due
        self._due = now + self.period_s
        self._loop.call_at(self._due, self._tick)
