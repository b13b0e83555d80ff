"""The infer route at the HTTP protocol level, without ASGI.

uvicorn runs every request as an ASGI cycle: a scope dict, a task, receive() and send()
awaitables, an asyncio.Event, and two socket writes per answer (head, then body). For
`POST /v2/models/{m}[/versions/{v}]/infer` the protocol here skips all of that: the body's
bytes are collected as the parser hands them over; once complete, the app's infer handler
(server/wire.py names its steps) decodes and hands the request off; when the answer is done
(a future's callback, no task), it is encoded and leaves in ONE socket write. Every other
route, and any infer request the fast path does not take (a %-escaped or absolute URL, a
server at its concurrency limit), goes through ASGI as before.

What applies to infer keeps applying: the limits of server/limits.py (which sits on top of
this class: head and body timeouts, head size, connection limit), the body limit (413), the
app's error bodies and statuses (the same handler answers both ways), keep-alive, requests
pipelined on one connection (answered in order, one at a time, as uvicorn does), write
backpressure (the next request waits while the client does not read), uvicorn's default
headers (`date`), and a graceful shutdown (an answer in flight is sent with
`connection: close`, then the connection closes; uvicorn waits for connections to close).

The app opts in by an attribute: `fast_infer`, its handler (LoopserveApp.infer, FrontendApp).
"""

from __future__ import annotations

import re
import time

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from loopserve.server.body import add_chunk, over_limit, whole

# On the raw URL: a %-escape, a query-less absolute form or anything unusual goes to ASGI,
# which decodes the path as uvicorn does.
_INFER_URL = re.compile(rb"/v2/models/([^/?#%]+)(?:/versions/([^/?#%]+))?/infer(?:\?[^#]*)?")
_WHOLE_WRITE_BYTES = 64 << 10  # past this, the body is not copied into the head's buffer


def fast_infer_handler(app):
    """The app's infer handler, looking through ASGI middleware uvicorn wraps it in (such as
    its proxy-headers middleware, whose rewrite of client and scheme infer never reads)."""
    for _ in range(8):
        handler = getattr(app, "fast_infer", None)
        if handler is not None or not hasattr(app, "app"):
            return handler
        app = app.app
    return None


class _NoEvent:
    """uvicorn's protocol sets `cycle.message_event` when body bytes or a disconnect arrive;
    the fast path reads its state instead of waiting on an event."""

    __slots__ = ()

    def set(self) -> None:
        pass


_NO_EVENT = _NoEvent()


class InferCycle:
    """One infer request on the fast path. It has the attributes of uvicorn's
    RequestResponseCycle that the protocol and server/limits.py read and write
    (response_started, response_complete, disconnected, keep_alive, message_event).
    On the event loop's thread."""

    __slots__ = ("protocol", "name", "version", "context", "body", "size", "more_body", "started", "start_time",
                 "expect_100", "keep_alive", "response_started", "response_complete", "disconnected",
                 "message_event", "refusal", "finish")

    def __init__(self, protocol: "InferFastPath", name: str, version: str | None, keep_alive: bool,
                 expect_100: bool):
        self.protocol = protocol
        self.name, self.version = name, version
        self.context = None
        self.body: list[bytes] | bytearray | None = []  # None once refused or running: later bytes are dropped
        self.size = 0
        self.more_body = True
        self.started = False  # its turn on the connection has come
        self.start_time = time.perf_counter()
        self.expect_100 = expect_100
        self.keep_alive = keep_alive
        self.response_started = self.response_complete = self.disconnected = False
        self.message_event = _NO_EVENT
        self.refusal: BaseException | None = None  # refused before its turn: answered on its turn
        self.finish = None

    # -- steps (the parser's callbacks call these) -----------------------------------------

    def begin(self) -> None:
        """Its turn on the connection."""
        self.started = True
        if self.refusal is not None:
            self.answer(self.protocol.fast_infer.refusal(self.refusal, self.name))
        elif not self.more_body:
            self.run()
        elif self.expect_100 and not self.protocol.transport.is_closing():
            self.protocol.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def add_body(self, chunk: bytes) -> None:
        if self.body is None:
            return
        self.body = add_chunk(self.body, self.size, chunk)
        self.size += len(chunk)
        limit = self.protocol.fast_infer.max_body_bytes
        if self.size > limit:
            self.refuse(over_limit(limit))

    def body_complete(self) -> None:
        if self.body is None:
            return
        self.more_body = False
        if self.started:
            self.run()

    def refuse(self, exc: BaseException) -> None:
        """Refused before its body was complete (from its head, or a body over the limit)."""
        self.body = None
        if self.started:
            self.answer(self.protocol.fast_infer.refusal(exc, self.name))
        else:
            self.refusal = exc

    def run(self) -> None:
        handler = self.protocol.fast_infer
        body = whole(self.body)
        self.body = None
        try:
            pending, self.finish = handler.submit(self.context, self.name, self.version, body, self.start_time)
        except Exception as exc:
            self.answer(handler.refusal(exc, self.name))
            return
        if pending.done():
            self.completed(pending)
        else:
            pending.add_done_callback(self.completed)

    def completed(self, pending) -> None:
        try:
            answer = self.finish(pending)  # also when disconnected: it releases what the request held
        except Exception as exc:  # a bug of ours: answered 500 (and logged), as ASGI would
            answer = self.protocol.fast_infer.refusal(exc, self.name)
        if answer is not None:
            self.answer(answer)

    # -- the answer -----------------------------------------------------------------------

    def answer(self, answer) -> None:
        status, headers, payload = answer
        protocol = self.protocol
        transport = protocol.transport
        self.response_started = True
        if self.disconnected or transport.is_closing():
            self.response_complete = True
            return
        lines = [STATUS_LINE[status]]
        for name, value in protocol.server_state.default_headers:
            lines += (name, b": ", value, b"\r\n")
        for name, value in headers:
            lines += (name, b": ", value, b"\r\n")
        if not self.keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"content-length: %d\r\n\r\n" % len(payload))
        if len(payload) <= _WHOLE_WRITE_BYTES:
            lines.append(payload)
            transport.write(b"".join(lines))
        else:
            transport.writelines((b"".join(lines), payload))
        self.response_complete = True
        if not self.keep_alive:
            transport.close()
        if protocol.flow.write_paused:  # the client does not read: the next request waits for it
            protocol.loop.create_task(self._complete_after_drain())
        else:
            protocol.on_response_complete()

    async def _complete_after_drain(self) -> None:
        await self.protocol.flow.drain()
        self.protocol.on_response_complete()


class InferFastPath(HttpToolsProtocol):
    """uvicorn's httptools protocol with the infer route taken before ASGI. Per connection,
    on the event loop's thread (as its base class)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fast_infer = fast_infer_handler(self.app)
        admission = getattr(self.fast_infer, "admission", None)
        if admission is not None:  # overload (server/admission.py) counts this process's connections
            admission.connections = self.connections

    def on_headers_complete(self) -> None:
        cycle = self._fast_cycle()
        if cycle is None:
            super().on_headers_complete()
            return
        existing = self.cycle
        self.cycle = cycle
        try:
            cycle.context = self.fast_infer.head(cycle.name, self.headers)
        except Exception as exc:
            cycle.refuse(exc)
        if existing is None or existing.response_complete:
            cycle.begin()
        else:  # pipelined: answered after the requests ahead of it, as uvicorn does
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, None))

    def _fast_cycle(self) -> InferCycle | None:
        """An InferCycle when this request takes the fast path."""
        if self.fast_infer is None or self.parser.get_method() != b"POST":
            return None
        match = _INFER_URL.fullmatch(self.url)
        if match is None or self.parser.should_upgrade():
            return None
        limit = self.limit_concurrency  # uvicorn answers 503 past it: left to uvicorn
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            return None
        try:
            name = match[1].decode("ascii")
            version = match[2].decode("ascii") if match[2] is not None else None
        except UnicodeDecodeError:
            return None
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        return InferCycle(self, name, version, keep_alive, self.expect_100_continue)

    def _start_asgi_task(self, cycle, app) -> None:
        if type(cycle) is InferCycle:  # a pipelined infer request's turn
            cycle.begin()
        else:
            super()._start_asgi_task(cycle, app)

    def on_body(self, body: bytes) -> None:
        if type(self.cycle) is InferCycle:
            self.cycle.add_body(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if type(self.cycle) is InferCycle:
            self.cycle.body_complete()
        else:
            super().on_message_complete()
