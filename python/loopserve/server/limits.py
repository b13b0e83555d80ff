"""Connection limits for a public port, on top of uvicorn's httptools protocol.

uvicorn gives two of them: `timeout_keep_alive` (an idle connection between requests closes)
and `limit_concurrency` (past it, a request is answered 503). Its httptools protocol has no
timeout while a request's head or body arrives, no bound on the head's size (h11's
`h11_max_incomplete_event_size` has no httptools counterpart), and accepts connections past
`limit_concurrency`, holding them until they send a head. `LimitedHttpToolsProtocol` adds
those: one timer per connection (armed for the head, then for the body), a byte count while
the head arrives, and a refusal at accept time.
"""

from __future__ import annotations

import functools

from loopserve.server.config import HttpConfig
from loopserve.server.fastpath import InferFastPath
from loopserve.server.http_errors import error_body


def uvicorn_settings(http: HttpConfig) -> dict:
    """uvicorn.Config keyword arguments that apply `http`'s limits."""
    return {"http": functools.partial(LimitedHttpToolsProtocol, limits=http),
            "timeout_keep_alive": http.keep_alive_s, "limit_concurrency": http.max_connections}


def _response(status: int, reason: str, message: str) -> bytes:
    body = error_body(message)
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


class LimitedHttpToolsProtocol(InferFastPath):
    """Per connection, on the event loop's thread (as its base class). The limits apply to the
    infer route's fast path beneath them (server/fastpath.py) as to every ASGI route."""

    def __init__(self, *args, limits: HttpConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._timer = None
        self._head_bytes = 0
        self._in_head = True  # reading a request's head (or waiting for its first byte)
        self._idle = False  # the timer running is _idle_timed_out's
        self._peer_done = False  # the client half-closed after sending requests still being answered

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, "Service Unavailable", f"the server holds its limit of {self.limits.max_connections} "
                                                     "connections (http.max_connections); retry later")
            return
        # Until its first head has arrived (uvicorn's keep-alive timer runs only between requests).
        self._arm(self.limits.header_timeout_s, self._head_timed_out)

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def eof_received(self) -> bool | None:
        """The client half-closed (RFC 9112 §9.6 lets it, after a whole request): its requests
        already read are still answered, then the connection closes (on_response_complete).
        Anything else (idle, or a request cut short) closes now, as before."""
        cycle = self.cycle
        if self._head_bytes == 0 and cycle is not None and not cycle.more_body and not cycle.response_complete:
            self._peer_done = True
            return True  # the transport stays open for the answers
        return None

    def on_response_complete(self) -> None:
        if self._peer_done and not self.pipeline and not self.transport.is_closing():
            self.transport.close()  # the last answer to a half-closed client is written
            return
        super().on_response_complete()

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Checked after parsing: a chunk that completes the head may carry body bytes too.
        if self._in_head and self._head_bytes > self.limits.max_header_bytes and not self.transport.is_closing():
            self._refuse(431, "Request Header Fields Too Large",
                         f"the request's head is over {self.limits.max_header_bytes} bytes (http.max_header_bytes)")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._timer is None or self._idle:
            self._arm(self.limits.header_timeout_s, self._head_timed_out)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()
        if not self.parser.should_upgrade():
            self._arm(self.limits.body_timeout_s, self._body_timed_out)

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head, self._head_bytes = True, 0  # the next request's head (keep-alive)
        answered = self.cycle is not None and self.cycle.response_complete
        super().on_message_complete()
        if answered and not self.transport.is_closing():
            # Answered before its body had all arrived (413): the body's last bytes cancelled
            # uvicorn's keep-alive timer, and nothing else would close the idle connection.
            self._arm(self.limits.keep_alive_s, self._idle_timed_out)
            self._idle = True

    def shutdown(self) -> None:
        """On SIGTERM: a request whose body is still arriving has not started; refused at once
        (503), so that a client stalled mid-body does not hold the drain for graceful_shutdown_s."""
        cycle = self.cycle
        if cycle is not None and not self._in_head and not cycle.response_started:
            self._refuse(503, "Service Unavailable", "the server is shutting down; retry the request")
            return
        super().shutdown()

    def _idle_timed_out(self) -> None:
        self._timer = None
        self.transport.close()

    def _head_timed_out(self) -> None:
        self._timer = None
        self._refuse(408, "Request Timeout", f"the request's head did not arrive within "
                                             f"{self.limits.header_timeout_s} s (http.header_timeout_s)")

    def _body_timed_out(self) -> None:
        self._timer = None
        cycle = self.cycle
        if cycle is not None and cycle.response_started:  # the app answers already: just close
            self.transport.close()
            return
        self._refuse(408, "Request Timeout", f"the request's body did not arrive within "
                                             f"{self.limits.body_timeout_s} s (http.body_timeout_s)")

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answers and closes; the app's receive() (if a request is in progress) then sees a
        disconnect."""
        self._disarm()
        if self.cycle is not None:  # the app's receive() sees a disconnect, its send() goes nowhere
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.write(_response(status, reason, message))
        self.transport.close()

    def _arm(self, seconds: float, callback) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        self._idle = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
