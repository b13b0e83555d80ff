"""The HTTP front-end processes of a server with `workers: N` (N > 1), as the engine runs them.

The engine process (server/main.py) owns the models, batchers, routing, monitors and feedback,
and serves every route but infer on a Unix socket. Each front end (server/frontend.py) accepts
connections on the public port (SO_REUSEPORT: the kernel spreads connections over them), and
talks to the engine through its own shared-memory channel, which the engine's native ingress
reads. The supervisor starts them, starts a new one in place of one that dies (its channel is
closed and a fresh one opened: the other front ends lose nothing), collects their latency
histograms for /metrics, and stops them first on shutdown so that they drain while the
engine still answers.

Thread-safety: the engine's event loop thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass, field

import msgspec

from loopserve.server.config import HttpConfig
from loopserve.server.frontend import LATENCY_PATH
from loopserve.server.latency import LatencyHistogram
from loopserve.server.metrics import HopPollCollector, NativeHttpCollector
from loopserve.server.native_infer import start_native_http

log = logging.getLogger("loopserve.supervisor")


@dataclass
class Frontend:
    index: int
    process: asyncio.subprocess.Process
    channel: object  # loopserve._core.ChannelHandle
    lifeline: int    # the engine's end of the pipe whose closing tells the front end the engine is gone
    control_uds: str
    client: object = None  # httpx.AsyncClient on control_uds, made once (a new client costs milliseconds of CPU)
    latency: dict = field(default_factory=dict)  # its histograms as last read
    overload_refused: dict = field(default_factory=dict)  # its admission's refusals by model, as last read
    spins: list = field(default_factory=lambda: [0, 0])  # its polls for answers: caught, missed


class FrontendSupervisor:
    def __init__(self, *, workers: int, ingress, host: str, port: int, engine_uds: str, workdir: str,
                 max_body_bytes: int, channel_bytes: int, graceful_shutdown_s: float, http: HttpConfig,
                 gil_switch_interval_us: int, log_level: str, latency: dict[tuple[str, str], LatencyHistogram],
                 overload_refused: dict[str, int], native_http=None):
        self.workers = workers
        self.native_http = native_http  # http.native_infer: the engine's HttpServer, which hands connections over
        self.ingress = ingress
        self.host, self.port = host, port
        self.engine_uds = engine_uds
        self.workdir = workdir
        self.max_body_bytes = max_body_bytes
        self.channel_bytes = channel_bytes
        self.graceful_shutdown_s = graceful_shutdown_s
        self.http = http  # its connection limits apply in every front end
        self.gil_switch_interval_us = gil_switch_interval_us
        self.log_level = log_level
        self.latency = latency  # the engine's ServerMetrics histograms, refreshed from the front ends
        self.overload_refused = overload_refused  # the engine's ServerMetrics counts, summed from the front ends
        self._retired_refused: dict[str, int] = {}
        self._retired_spins = [0, 0]
        self.hop_polls: dict[str, int] = {}  # the front ends' polls for answers, summed (HopPollCollector)
        self.frontends: dict[int, Frontend] = {}
        self.restarts = 0
        self._retired: dict[tuple[str, str], tuple[list[int], float]] = {}  # counts of front ends gone
        self._stopping = False
        self._tasks: set[asyncio.Task] = set()
        self._spawned = 0

    async def start(self, timeout_s: float = 120.0) -> None:
        """Starts the front ends and returns once each accepts requests."""
        for i in range(self.workers):
            await self._spawn(i)
        try:
            await asyncio.wait_for(asyncio.gather(*(self._ready(f) for f in self.frontends.values())), timeout_s)
        except asyncio.TimeoutError:
            raise RuntimeError(f"front ends not ready after {timeout_s:.0f} s: {self._states()}") from None
        self._keep(asyncio.ensure_future(self._poll_latency()))

    def _states(self) -> str:
        """Each front end's pid, exit code and whether its control socket exists: what a start
        that timed out needs to be told apart (never started serving, or died unnoticed)."""
        return "; ".join(f"{f.index}: pid {f.process.pid}, returncode {f.process.returncode}, "
                         f"control socket {'present' if os.path.exists(f.control_uds) else 'absent'}, "
                         f"/proc entry {'present' if os.path.exists(f'/proc/{f.process.pid}') else 'absent'}"
                         for f in self.frontends.values())

    async def _ready(self, frontend: Frontend) -> None:
        while frontend.process.returncode is None:
            if await self._read_latency(frontend):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"front end {frontend.index} exited with {frontend.process.returncode} while starting")

    async def _spawn(self, index: int) -> None:
        channel = self.ingress.open_channel(self.channel_bytes)
        read_end, write_end = os.pipe()
        self._spawned += 1
        control = os.path.join(self.workdir, f"frontend-{self._spawned}.sock")
        fds = (channel.memfd, channel.request_efd, channel.response_efd, read_end)
        handoff_args: tuple[str, ...] = ()
        theirs = None
        if self.native_http is not None:  # connections come from the engine's native server, not the port
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self.native_http.set_handoff(index, ours.detach())
            handoff_args = ("--handoff-fd", str(theirs.fileno()))
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loopserve.server.frontend",
            "--fds", ",".join(map(str, fds)), *handoff_args, "--engine-uds", self.engine_uds, "--control-uds", control,
            "--host", self.host, "--port", str(self.port), "--max-body-bytes", str(self.max_body_bytes),
            "--graceful-shutdown-s", str(self.graceful_shutdown_s), "--http", msgspec.json.encode(self.http).decode(),
            "--gil-switch-interval-us", str(self.gil_switch_interval_us), "--log-level", self.log_level,
            pass_fds=fds if theirs is None else (*fds, theirs.fileno()), stdin=asyncio.subprocess.DEVNULL)
        os.close(read_end)
        if theirs is not None:
            theirs.close()
        import httpx

        client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=control), base_url="http://frontend",
                                   timeout=2.0)
        frontend = Frontend(index, process, channel, write_end, control, client)
        self.frontends[index] = frontend
        log.info("front end started", extra={"index": index, "pid": process.pid})
        self._keep(asyncio.ensure_future(self._watch(frontend)))

    async def _watch(self, frontend: Frontend) -> None:
        code = await frontend.process.wait()
        await frontend.client.aclose()
        self.ingress.close_channel(frontend.channel)
        os.close(frontend.lifeline)
        for key, (counts, total) in frontend.latency.items():
            base = self._retired.setdefault(key, ([0] * len(counts), 0.0))
            self._retired[key] = ([a + b for a, b in zip(base[0], counts)], base[1] + total)
        for model, n in frontend.overload_refused.items():
            self._retired_refused[model] = self._retired_refused.get(model, 0) + n
        self._retired_spins = [a + b for a, b in zip(self._retired_spins, frontend.spins)]
        if self._stopping or self.frontends.get(frontend.index) is not frontend:
            return
        self.restarts += 1
        log.error("front end exited; starting another", extra={"index": frontend.index, "code": code,
                                                                 "pid": frontend.process.pid})
        await self._spawn(frontend.index)

    async def stop(self) -> None:
        """SIGTERM to every front end (each stops accepting and finishes what it has), then waits."""
        self._stopping = True
        running = [f for f in self.frontends.values() if f.process.returncode is None]
        for f in running:
            f.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(f.process.wait() for f in running)),
                                   self.graceful_shutdown_s + 5)
        except asyncio.TimeoutError:
            for f in running:
                if f.process.returncode is None:
                    f.process.kill()
            await asyncio.gather(*(f.process.wait() for f in running))
        for task in list(self._tasks):
            task.cancel()

    async def _poll_latency(self) -> None:
        """Every second, each front end's latency histograms, summed into the engine's."""
        while True:
            await asyncio.sleep(1.0)
            await self.collect_latency()

    async def collect_latency(self) -> None:
        """Reads every running front end's histograms, and sums them into the engine's."""
        running = [f for f in self.frontends.values() if f.process.returncode is None]
        await asyncio.gather(*(self._read_latency(f) for f in running))
        self.refresh_latency()

    async def _read_latency(self, frontend: Frontend) -> bool:
        try:
            response = await frontend.client.get(LATENCY_PATH)
            if response.status_code != 200:
                return False
            state = msgspec.json.decode(response.content)
            frontend.latency = {tuple(k.split("\t")): (v[0], v[1]) for k, v in state["latency"].items()}
            frontend.overload_refused = state["overload_refused"]
            frontend.spins = state.get("spins", [0, 0])
            return True
        except Exception:  # starting or stopping: read it next time
            return False

    def refresh_latency(self) -> None:
        totals: dict[tuple[str, str], tuple[list[int], float]] = dict(self._retired)
        for f in self.frontends.values():
            for key, (counts, total) in f.latency.items():
                base = totals.get(key)
                totals[key] = (list(counts), total) if base is None else (
                    [a + b for a, b in zip(base[0], counts)], base[1] + total)
        native = self.native_http.stats() if self.native_http is not None else None
        if native is not None:  # requests the engine answered itself
            for key, (counts, total) in native["latency"].items():
                base = totals.get(key)
                totals[key] = (list(counts), total) if base is None else (
                    [a + b for a, b in zip(base[0], counts)], base[1] + total)
        for key, (counts, total) in totals.items():
            histogram = self.latency.get(key)
            if histogram is None:
                histogram = self.latency[key] = LatencyHistogram()
            histogram.counts = list(counts)
            histogram.sum = total
        refused = dict(self._retired_refused)
        for model, n in (native["overload_refused"].items() if native is not None else ()):
            refused[model] = refused.get(model, 0) + n
        for f in self.frontends.values():
            for model, n in f.overload_refused.items():
                refused[model] = refused.get(model, 0) + n
        self.overload_refused.update(refused)
        caught, missed = self._retired_spins
        for f in self.frontends.values():
            caught, missed = caught + f.spins[0], missed + f.spins[1]
        self.hop_polls.update(caught=caught, missed=missed)

    def _keep(self, task: asyncio.Task) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class MultiProcessServer:
    """Makes a LoopserveApp the engine of a server with `workers` front-end processes.

        engine = MultiProcessServer(app, workers=4, host="0.0.0.0", port=8000, http=config.http)
        uvicorn.Server(uvicorn.Config(app, uds=engine.engine_uds, ...)).run()   # the engine's own routes
        engine.cleanup()

    The app's lifespan starts the front ends once it runs and stops them first when it stops
    (they finish their requests while the engine still answers), then the native ingress."""

    def __init__(self, app, *, workers: int, host: str, port: int, http, gil_switch_interval_us: int,
                 log_level: str = "info"):
        import socket
        import tempfile

        from loopserve.serving.native_routes import NativeRoutes

        self.workdir = tempfile.mkdtemp(prefix="loopserve-engine-")
        self.engine_uds = os.path.join(self.workdir, "engine.sock")
        # Port 0: a port is chosen once here and shared by every front end (SO_REUSEPORT); this
        # socket, bound but never listening, keeps it ours while front ends come and go.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._reservation = socket.socket(family, socket.SOCK_STREAM)
        self._reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self._reservation.bind((host, port))
        self.port = self._reservation.getsockname()[1]
        self.native = NativeRoutes(app.repository, spin_us=http.spin_us)
        self.native_http = None
        if http.native_for(workers):
            # The engine's native server owns the port (csrc/http/): it listens on the socket
            # the port was reserved with; the front ends take what it hands them.
            self.native_http = start_native_http(self.native.router, self._reservation, http)
        self.supervisor = FrontendSupervisor(
            workers=workers, ingress=self.native.ingress, host=host, port=self.port, engine_uds=self.engine_uds,
            workdir=self.workdir, max_body_bytes=http.max_body_bytes, channel_bytes=http.channel_size(),
            graceful_shutdown_s=http.graceful_shutdown_s, http=http, gil_switch_interval_us=gil_switch_interval_us,
            log_level=log_level, latency=app.metrics.latency_histograms,
            overload_refused=app.metrics.overload_refused, native_http=self.native_http)
        app.metrics.registry.register(HopPollCollector(self.native.ingress, self.supervisor.hop_polls))
        if self.native_http is not None:
            app.metrics.registry.register(NativeHttpCollector(self.native_http))
        app.on_startup.append(self.supervisor.start)
        app.before_metrics.append(self.supervisor.collect_latency)
        app.on_shutdown.append(self._stop)

    async def _stop(self) -> None:
        # The native loop (no new connections; answers in flight still go out) and the front ends
        # drain side by side, each for graceful_shutdown_s at most: one after the other, a stop
        # took up to twice that, past what a process manager's grace period allows for.
        drains = [self.supervisor.stop()]
        if self.native_http is not None:
            drains.append(asyncio.to_thread(self.native_http.stop))
        await asyncio.gather(*drains)
        await asyncio.to_thread(self.native.close)

    def cleanup(self) -> None:
        import shutil

        self._reservation.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
