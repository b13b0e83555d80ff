"""One HTTP front-end process of a server with `workers: N` (N > 1).

The front end parses, decodes, hands each infer request to the engine through its
shared-memory channel (loopserve._core.FrontendChannel), awaits the answer, encodes and sends
it. It holds no model and no state of its own beyond its latency histograms: every other
route is forwarded to the engine process, which owns the models, the routing, the monitors
and the feedback record (see server/supervisor.py for how the processes are started).

The engine's answers arrive with at most one wake-up of this loop per batch of completions
(an eventfd). When the engine process goes away, every request waiting on it is answered 503
at once and the front end exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import logging
import os
import socket
import sys
import time

import msgspec
import numpy as np

from loopserve import _core
from loopserve.errors import InvalidInput
from loopserve.logs import configure_logging
from loopserve.server import heap
from loopserve.server.admission import LoopLag, Overloaded
from loopserve.server.forward import EngineForward
from loopserve.server.handoff import HandoffReceiver
from loopserve.server.http_errors import BodyTooLarge, error_body, status_of
from loopserve.server.latency import LatencyHistogram
from loopserve.server.protocol import NUMPY_DTYPES, encode_response
from loopserve.server.wire import (INFER_PATH, answer_headers, decode_and_submit, headers_of, scheduling_of,
                                   send_response, serve_asgi)

log = logging.getLogger("loopserve.frontend")

_JSON = [(b"content-type", b"application/json")]
_RETRY = {429: [(b"retry-after", b"1")], 503: [(b"retry-after", b"1")]}
LATENCY_PATH = "/_frontend/latency"  # the engine's read of this process's histograms (Unix socket only)
# Polling for the answer (http.spin_us) only with a few clients: a longer poll would hold up
# the other connections' turn; after a poll that missed, the window halves, and a closed one
# is tried again after SPIN_RETRY_FLUSHES turns.
SPIN_MAX_CONNECTIONS = 4
SPIN_MAX_PENDING = 2
SPIN_RETRY_FLUSHES = 256
# What the channel to the engine carries (csrc/dtype.h): every datatype but BF16.
CHANNEL_DATATYPES = tuple(name for name in NUMPY_DTYPES if name != "BF16")


class EngineGone(Exception):
    pass


class EngineChannel:
    """This process's end of its channel to the engine. Thread-safety: the event loop's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, memfd: int, request_efd: int, response_efd: int,
                 spin_us: int = 0, few_clients=lambda: False):
        self.native = _core.FrontendChannel(memfd, request_efd, response_efd)
        self.loop = loop
        self.pending: dict[int, asyncio.Future] = {}
        self.tokens = itertools.count(1)
        self.gone = False
        self.flush_scheduled = False
        self.spin_us = spin_us
        self.spin_window = spin_us
        self.spin_closed_flushes = 0
        self.spins = [0, 0]  # polls that caught the answer, polls that missed it
        self.few_clients = few_clients
        loop.add_reader(self.native.fd, self._on_readable)
        self._on_readable()

    def submit(self, model: str, version: str, key: str, request_id: str, group: str, priority: int,
               timeout_us: int, raw: bool, inputs: list[tuple[str, np.ndarray]]) -> asyncio.Future:
        if self.gone:
            raise EngineGone()
        token = next(self.tokens)
        sent = self.native.submit(token, model, version, key, request_id, group, priority, timeout_us, raw, inputs,
                                  True)
        if not self.flush_scheduled:
            # One wake-up of the engine per loop turn, after this turn's reads, not one per request.
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)
        if sent == 1:
            return _answered(self.loop, (503, 0, "the server is at capacity (its channel to the engine is full); "
                                                 "retry later", None))
        if sent == 2:
            return _answered(self.loop, (413, 0, f"the request is larger than the channel to the engine carries "
                                                 f"({self.native.max_payload} bytes); raise http.channel_bytes",
                                         None))
        future = self.loop.create_future()
        self.pending[token] = future
        return future

    def _flush(self) -> None:
        self.flush_scheduled = False
        self.native.flush()
        if self.spin_us and 0 < len(self.pending) <= SPIN_MAX_PENDING and self.few_clients():
            self._spin()

    def _spin(self) -> None:
        """Polls for the answer a moment instead of sleeping until the engine wakes this loop."""
        if not self.spin_window:
            self.spin_closed_flushes += 1
            if self.spin_closed_flushes < SPIN_RETRY_FLUSHES:
                return
            self.spin_closed_flushes, self.spin_window = 0, self.spin_us
        if self.native.spin(self.spin_window):
            self.spins[0] += 1
            self.spin_window = self.spin_us
            self._on_readable()
        else:  # the engine takes longer than that (a slow model): polling costs more than it saves
            self.spins[1] += 1
            self.spin_window = self.spin_window // 2 if self.spin_window >= 16 else 0

    def _on_readable(self) -> None:
        pending = self.pending
        while True:
            for token, status, version, text, outputs in self.native.drain():
                future = pending.pop(token, None)
                if future is not None and not future.done():
                    future.set_result((status, version, text, outputs))
            if self.native.prepare_sleep():
                return

    def fail_all(self) -> None:
        self.gone = True
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_result((503, 0, "the server's engine process stopped", None))


def _check_channel_datatypes(request) -> None:
    """A datatype the channel cannot carry is refused by name (the channel would say only that a
    numpy dtype has no protocol datatype)."""
    for inp in request.inputs:
        if inp.datatype not in CHANNEL_DATATYPES:
            raise InvalidInput(f"input '{inp.name}' has datatype {inp.datatype}, which a server with workers > 1 "
                               f"does not carry to its models; send one of {', '.join(CHANNEL_DATATYPES)}")


def _answered(loop, result) -> asyncio.Future:
    future = loop.create_future()
    future.set_result(result)
    return future


class FrontendApp:
    """The ASGI application of a front-end process."""

    def __init__(self, fds: tuple[int, int, int], lifeline: int, engine_uds: str, max_body_bytes: int,
                 admission: LoopLag, spin_us: int = 0):
        self.fds = fds
        self.spin_us = spin_us
        self.admission = admission  # overload: refused from the head while this loop runs late
        self.lifeline = lifeline
        self.engine_uds = engine_uds
        self.max_body_bytes = max_body_bytes
        self.channel: EngineChannel | None = None
        self.latency: dict[tuple[str, str], LatencyHistogram] = {}
        self.engine_gone = asyncio.Event()
        self.forward = EngineForward(engine_uds, max_body_bytes, self.engine_gone)  # every other route
        self.fast_infer = self  # the HTTP protocol runs infer without ASGI (server/fastpath.py)
        # The models the engine has answered for: only their requests are refused under overload
        # (and counted by name), so that names a client makes up are neither (they get the engine's 404).
        self.served_models: set[str] = set()

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope["method"] == "POST":
                match = INFER_PATH.match(scope["path"])
                if match:
                    await self.infer(scope, receive, send, match[1], match[2])
                    return
            if scope["path"] == LATENCY_PATH and (scope.get("server") or (None, None))[1] is None:  # Unix socket: the engine
                await send_response(send, 200, _JSON, msgspec.json.encode(
                    {"latency": {f"{m}\t{v}": [h.counts, h.sum] for (m, v), h in self.latency.items()},
                     "overload_refused": self.admission.refused,
                     "spins": self.channel.spins if self.channel is not None else [0, 0]}))
                return
            await self.forward(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                loop = asyncio.get_running_loop()
                self.channel = EngineChannel(loop, *self.fds, spin_us=self.spin_us, few_clients=self._few_clients)
                loop.add_reader(self.lifeline, self._on_lifeline)
                self.forward.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.forward.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _few_clients(self) -> bool:
        connections = self.admission.connections  # uvicorn's open connections (server/fastpath.py)
        return connections is not None and len(connections) <= SPIN_MAX_CONNECTIONS

    def _on_lifeline(self) -> None:
        """The engine holds the other end of this pipe: end of file means it is gone."""
        if os.read(self.lifeline, 1):
            return
        asyncio.get_running_loop().remove_reader(self.lifeline)
        log.error("the engine process stopped; answering 503 and exiting")
        self.channel.fail_all()
        self.engine_gone.set()

    # -- the data plane -------------------------------------------------------------------

    # The infer route without I/O (the steps server/wire.py names): the ASGI route and the
    # fast path (server/fastpath.py) both run it.

    async def infer(self, scope, receive, send, name: str, version: str | None) -> None:
        await serve_asgi(self, scope, receive, send, name, version)

    def head(self, name: str, headers) -> int | None:
        content_length, header_length = headers_of(headers)
        if content_length is not None and content_length > self.max_body_bytes:
            raise BodyTooLarge(f"request body of {content_length} bytes is over the limit of "
                               f"{self.max_body_bytes} bytes (http.max_body_bytes)")
        if name in self.served_models:  # others go to the engine: a 404 for a model it does not serve
            self.admission.check(name)
        return header_length

    def submit(self, header_length: int | None, name: str, version: str | None, body: bytes, start: float):
        if header_length == 0:
            return self._submit(name, version, start, None, {"": np.frombuffer(body, np.uint8)}, raw=True)
        return decode_and_submit(body, header_length, functools.partial(self._submit, name, version, start),
                                 lambda exc: self.refusal(exc, name))

    def _submit(self, name: str, version: str | None, start: float, request, arrays, raw: bool = False):
        inputs = list(arrays.items())
        params = request.parameters if request is not None else None
        priority, timeout_us, key = scheduling_of(params)
        group = params.get("group") if params else None
        request_id = (request.id if request is not None else None) or ""
        if request is not None:
            _check_channel_datatypes(request)
        try:
            pending = self.channel.submit(name, version or "", key or "", request_id,
                                          "" if group is None else msgspec.json.encode(group).decode(),
                                          priority, timeout_us, raw, inputs)
        except (ValueError, TypeError) as exc:  # the channel's limits (inputs, dims, lengths): the client's
            raise InvalidInput(f"the request cannot be carried to the model: {exc}") from None
        self.admission.in_flight += 1
        return pending, functools.partial(self._finish, name, request, start)

    def _finish(self, name: str, request, start: float, pending):
        self.admission.in_flight -= 1
        if not pending.done() or pending.cancelled():  # the server stops: nobody to answer
            pending.cancel()
            return None
        status, answered_by, text, outputs = pending.result()
        if status != 200:
            return status, [*_JSON, *_RETRY.get(status, ())], error_body(text)
        self.served_models.add(name)
        params = request.parameters if request is not None else None
        binary_default = bool(params.get("binary_data_output", False)) if params else False
        try:
            payload, json_length = encode_response(name, str(answered_by), text or None, outputs,
                                                   request.outputs if request is not None else None, binary_default)
        except Exception as exc:
            return self.refusal(exc, name)
        key = (name, str(answered_by))
        histogram = self.latency.get(key)
        if histogram is None:
            histogram = self.latency[key] = LatencyHistogram()
        histogram.observe(time.perf_counter() - start)
        return 200, answer_headers(json_length), payload

    def refusal(self, exc: BaseException, name: str):
        if type(exc) is Overloaded:
            return self.admission.answer
        if isinstance(exc, EngineGone):
            return 503, _JSON + _RETRY[503], error_body("the server's engine process stopped")
        status, extra = status_of(exc)
        if status == 500:
            log.error("infer failed", exc_info=exc, extra={"model": name})
        return status, [*_JSON, *extra], error_body(str(exc))


def _listen(host: str, port: int) -> socket.socket:
    """The public port, shared with the other front ends: the kernel spreads connections
    over their sockets (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(False)
    return sock


def uvicorn_protocol(server):
    """What uvicorn makes for each connection it accepts (uvicorn.Server.startup's factory):
    handed-off connections are adopted with it."""
    config = server.config
    return functools.partial(config.http_protocol_class, config=config, server_state=server.server_state,
                             app_state=server.lifespan.state)


def _unix_listen(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    return sock


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from loopserve.server.config import HttpConfig
    from loopserve.server.limits import uvicorn_settings

    p = argparse.ArgumentParser(prog="loopserve-frontend", description="an HTTP front end of loopserve (internal)")
    p.add_argument("--fds", required=True, help="memfd,request_efd,response_efd,lifeline")
    p.add_argument("--engine-uds", required=True)
    p.add_argument("--control-uds", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-body-bytes", type=int, required=True)
    p.add_argument("--graceful-shutdown-s", type=float, required=True)
    p.add_argument("--http", required=True, help="the server's http config, JSON (its connection limits)")
    p.add_argument("--gil-switch-interval-us", type=int, required=True)
    p.add_argument("--handoff-fd", type=int, help="http.native_infer: the engine's native server owns the port and "
                                                  "hands this process connections on this Unix socket")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    configure_logging(args.log_level)
    sys.setswitchinterval(args.gil_switch_interval_us / 1e6)
    memfd, request_efd, response_efd, lifeline = (int(x) for x in args.fds.split(","))
    http = msgspec.json.decode(args.http, type=HttpConfig)
    app = FrontendApp((memfd, request_efd, response_efd), lifeline, args.engine_uds, args.max_body_bytes,
                      LoopLag(http.overload_wait_ms, http.overload_min_connections), http.spin_us)
    server = uvicorn.Server(uvicorn.Config(
        app, loop="uvloop", lifespan="on", log_config=None, access_log=False,
        timeout_graceful_shutdown=args.graceful_shutdown_s, proxy_headers=False, server_header=False,
        **uvicorn_settings(http)))

    async def watch_engine() -> None:
        await app.engine_gone.wait()
        server.should_exit = True

    async def run() -> None:
        watcher = asyncio.ensure_future(watch_engine())
        receiver = None
        control = _unix_listen(args.control_uds)
        sockets = [control] if args.handoff_fd is not None else [_listen(args.host, args.port), control]
        serving = asyncio.ensure_future(server.serve(sockets=sockets))
        try:
            if args.handoff_fd is not None:
                while not server.started and not serving.done():
                    await asyncio.sleep(0.005)
                if server.started:
                    receiver = HandoffReceiver(asyncio.get_running_loop(), args.handoff_fd, uvicorn_protocol(server))
            await serving
        finally:
            watcher.cancel()
            if receiver is not None:
                receiver.close()

    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    heap.large_buffers_from_mmap()  # server/heap.py: large bodies' memory goes back to the system
    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        runner.run(run())
    return 1 if app.engine_gone.is_set() else 0


if __name__ == "__main__":
    sys.exit(main())
