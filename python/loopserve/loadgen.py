"""Closed-loop HTTP clients that account for every request they send.

Each client thread sends a request, waits for its answer, and sends the next, over one
keep-alive connection, until stopped. Every request ends in exactly one outcome: answered 200
(and accepted by the caller's check), another status, a connection error (reset, closed, refused),
a timeout, or refused by the check. A client never dies silently: an unexpected exception is
counted as a crashed client. So `sent == accounted` always holds, and a zero-loss claim is the
one line `tally.assert_zero_loss()`, which sees a dropped connection as a failure.

The hot-swap demo and the zero-loss tests use these clients, against any base URL (one server
process, several, or a proxy in front of them).
"""

from __future__ import annotations

import http.client
import threading
import time
import traceback
import urllib.parse
from typing import Callable

import msgspec

# on_answer(client, body, latency_s) -> None to accept a 200 answer, or a description of what is
# wrong with it. Called on the client's own thread.
AnswerCheck = Callable[[int, bytes, float], "str | None"]
Body = bytes | Callable[[int, int], bytes]  # or body(client, request number)

KEEP_FAILURES = 10  # descriptions kept per tally, to say what went wrong


class Tally(msgspec.Struct):
    """What happened to the requests of one or more clients."""

    sent: int = 0
    ok: int = 0  # answered 200 and accepted by the check
    statuses: dict[int, int] = {}  # answered with another status: how many of each
    connection_errors: int = 0
    timeouts: int = 0
    refused_by_check: int = 0  # answered 200, but the check found the answer wrong
    crashed_clients: int = 0  # client threads ended by an unexpected exception
    failures: list[str] = []  # the first few, described

    @property
    def failed(self) -> int:
        return sum(self.statuses.values()) + self.connection_errors + self.timeouts + self.refused_by_check

    @property
    def accounted(self) -> int:
        return self.ok + self.failed

    def add(self, other: "Tally") -> None:
        self.sent += other.sent
        self.ok += other.ok
        for status, n in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + n
        self.connection_errors += other.connection_errors
        self.timeouts += other.timeouts
        self.refused_by_check += other.refused_by_check
        self.crashed_clients += other.crashed_clients
        self.failures.extend(other.failures[:KEEP_FAILURES - len(self.failures)])

    def _fail(self, description: str) -> None:
        if len(self.failures) < KEEP_FAILURES:
            self.failures.append(description)

    def summary(self) -> str:
        statuses = ", ".join(f"HTTP {s}: {n}" for s, n in sorted(self.statuses.items())) or "no other status"
        return (f"{self.sent:,} requests sent, {self.ok:,} answered, {self.failed} failed ({statuses}; "
                f"{self.connection_errors} connection errors, {self.timeouts} timeouts, "
                f"{self.refused_by_check} wrong answers); {self.crashed_clients} clients crashed")

    def assert_zero_loss(self) -> None:
        """Every request sent was answered 200 and accepted, and every one is accounted for."""
        assert self.sent > 0, "no request was sent"
        assert self.crashed_clients == 0 and self.accounted == self.sent and self.failed == 0, \
            f"{self.summary()}; first failures: {self.failures}"


class ClientLoops:
    """`clients` closed-loop clients POSTing to `base_url` + `path` until stop().

    Usable as a context manager (started on entry, stopped on exit); `tally` holds the totals
    once stopped. Thread-safe: start/stop from one thread, on_answer runs on the client threads.
    """

    def __init__(self, base_url: str, path: str, body: Body, clients: int, on_answer: AnswerCheck | None = None,
                 headers: dict[str, str] | None = None, timeout_s: float = 30.0):
        url = urllib.parse.urlsplit(base_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"base URL {base_url!r}: expected http://HOST[:PORT][/PREFIX]")
        self.host, self.port = url.hostname, url.port or 80
        self.path = url.path.rstrip("/") + path
        self.body = body
        self.on_answer = on_answer
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.timeout_s = timeout_s
        self.tallies = [Tally() for _ in range(clients)]  # one per client: a crash cannot lose its counts
        self.tally = Tally()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), name=f"client-{i}", daemon=True)
                         for i in range(clients)]

    def start(self) -> "ClientLoops":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> Tally:
        self._stop.set()
        for t in self._threads:
            t.join()
        self.tally = Tally()
        for tally in self.tallies:
            self.tally.add(tally)
        return self.tally

    def __enter__(self) -> "ClientLoops":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def sent(self) -> int:
        """Requests sent so far (a live reading, for progress)."""
        return sum(t.sent for t in self.tallies)

    def _client(self, i: int) -> None:
        tally = self.tallies[i]
        conn = None
        try:
            while not self._stop.is_set():
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
                body = self.body(i, tally.sent) if callable(self.body) else self.body
                tally.sent += 1
                start = time.perf_counter()
                try:
                    conn.request("POST", self.path, body=body, headers=self.headers)
                    response = conn.getresponse()
                    data = response.read()
                except TimeoutError:
                    tally.timeouts += 1
                    tally._fail(f"client {i}: no answer within {self.timeout_s} s")
                    conn.close()
                    conn = None
                    continue
                except (OSError, http.client.HTTPException) as e:
                    tally.connection_errors += 1
                    tally._fail(f"client {i}: {type(e).__name__}: {e}")
                    conn.close()
                    conn = None
                    continue
                latency = time.perf_counter() - start
                if response.status != 200:
                    tally.statuses[response.status] = tally.statuses.get(response.status, 0) + 1
                    tally._fail(f"client {i}: HTTP {response.status}: {data[:200]!r}")
                    continue
                try:
                    problem = self.on_answer(i, data, latency) if self.on_answer else None
                except Exception as e:  # the check could not read the answer: the answer is wrong
                    problem = f"{type(e).__name__}: {e}"
                if problem:
                    tally.refused_by_check += 1
                    tally._fail(f"client {i}: {problem}")
                else:
                    tally.ok += 1
        except BaseException:
            tally.crashed_clients += 1
            tally._fail(f"client {i} crashed: {traceback.format_exc(limit=3)}")
        finally:
            if conn is not None:
                conn.close()
