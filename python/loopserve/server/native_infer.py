"""The engine's native HTTP path for infer (http.native_infer, csrc/http/), from the Python side.

The native server owns the public port, answers the infer requests it takes, and hands every
other connection to a uvicorn that serves it as always (server/handoff.py):
- workers > 1: to the front-end processes (server/supervisor.py sets a socket per front end);
- workers 1: to this process's own uvicorn (`InProcessNativeInfer`), which then serves no port
  of its own.

Thread-safety: the event loop's thread (the native server is thread-safe itself).
"""

from __future__ import annotations

import asyncio
import socket

from loopserve import _core
from loopserve.server.admission import overload_message
from loopserve.server.latency import LATENCY_BUCKETS

# Bodies past this go to a front end (which decodes them off its loop, in slices), as do heads
# past this; a connection that has not sent a whole request this long after it opened or began
# one goes to a front end, whose head and body timers take over.
NATIVE_BODY_BYTES = 1 << 20
NATIVE_HEAD_BYTES = 16 << 10
NATIVE_STALL_S = 0.2


def start_native_http(router, sock: socket.socket, http) -> "_core.HttpServer":
    """The native server on `sock` (bound; it listens, and the server takes it) with `http`'s limits."""
    sock.listen(4096)
    return _core.HttpServer(
        router, sock.detach(), max_body_bytes=http.max_body_bytes, native_body_bytes=NATIVE_BODY_BYTES,
        max_head_bytes=min(http.max_header_bytes, NATIVE_HEAD_BYTES), max_connections=http.max_connections,
        keep_alive_s=http.keep_alive_s, stall_s=min(NATIVE_STALL_S, http.header_timeout_s),
        overload_wait_ms=http.overload_wait_ms, overload_min_connections=http.overload_min_connections,
        overload_message=overload_message(http.overload_wait_ms), latency_bounds=list(LATENCY_BUCKETS),
        send_timeout_s=http.send_timeout_s, drain_s=http.graceful_shutdown_s,
        # a connection no front end takes within the time its head would have had there: 503
        handoff_wait_s=http.header_timeout_s)


class InProcessNativeInfer:
    """workers 1 with http.native_infer: the native server in front of this process's uvicorn.

        native = InProcessNativeInfer(app, sock, http)      # sock: the public port, bound
        server = uvicorn.Server(uvicorn.Config(app, uds=..., **uvicorn_settings(http)))
        native.serve_with(server)                          # before server.run()

    The app's latency histograms and overload counts take in what the native path answered
    whenever they are read (app.before_metrics)."""

    def __init__(self, app, sock: socket.socket, http):
        from loopserve.server.metrics import NativeHttpCollector
        from loopserve.serving.native_routes import NativeRoutes

        self.app = app
        self.routes = NativeRoutes(app.repository)
        self.http = start_native_http(self.routes.router, sock, http)
        ours, self._theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.http.set_handoff(0, ours.detach())
        self.receiver = None
        self._merged: dict = {}  # what was added from the native counts so far, by key
        app.metrics.registry.register(NativeHttpCollector(self.http))
        app.before_metrics.append(self.merge_counts)
        app.on_shutdown.insert(0, self._stop)

    def serve_with(self, server) -> None:
        """Once `server` (uvicorn) runs, it adopts what the native server hands over."""
        from loopserve.server.frontend import uvicorn_protocol
        from loopserve.server.handoff import HandoffReceiver

        async def attach() -> None:
            async def when_started() -> None:
                while not server.started:
                    await asyncio.sleep(0.005)
                self.receiver = HandoffReceiver(asyncio.get_running_loop(), self._theirs.detach(),
                                                uvicorn_protocol(server))

            self._attaching = asyncio.ensure_future(when_started())

        self.app.on_startup.append(attach)

    async def merge_counts(self) -> None:
        """Adds what the native path answered since the last call to the app's histograms."""
        stats = self.http.stats()
        for (model, version), (counts, total) in stats["latency"].items():
            seen_counts, seen_total = self._merged.get((model, version), ([0] * len(counts), 0.0))
            histogram = self.app.metrics.latency(model, version)
            histogram.counts = [a + b - c for a, b, c in zip(histogram.counts, counts, seen_counts)]
            histogram.sum += total - seen_total
            self._merged[(model, version)] = (list(counts), total)
        refused = self.app.metrics.overload_refused
        for model, n in stats["overload_refused"].items():
            seen = self._merged.get(("refused", model), 0)
            refused[model] = refused.get(model, 0) + n - seen
            self._merged[("refused", model)] = n

    async def _stop(self) -> None:
        await asyncio.to_thread(self.http.stop)
        if self.receiver is not None:
            self.receiver.close()
        await asyncio.to_thread(self.routes.close)
