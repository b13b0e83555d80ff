"""`loopserve serve`: load the models, then serve them over HTTP until SIGTERM or SIGINT.

On SIGTERM uvicorn stops accepting connections and lets in-flight requests finish; then
every model's batcher runs what it has queued and stops; the process exits 0.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys

import uvicorn

from loopserve.logs import configure_logging
from loopserve.server import heap
from loopserve.server.app import LoopserveApp
from loopserve.server.config import ServerConfig
from loopserve.server.limits import uvicorn_settings
from loopserve.server.supervisor import MultiProcessServer
from loopserve.serving.registry_source import ModelSource, RegistryModels
from loopserve.serving.repository import ModelRepository
from loopserve.thread_budget import expect_repository_models

log = logging.getLogger("loopserve.server")


def build_app(config: ServerConfig) -> LoopserveApp:
    """Loads the configured models (all in the repository when none are named); a model that
    fails to load stops start-up with its reason, as Triton does by default."""
    sources = [m for m in config.models if isinstance(m, ModelSource)]
    named = [m for m in config.models if isinstance(m, str)]
    registry = RegistryModels(sources, config.store) if sources else None
    repository = ModelRepository(config.model_repository, registry)
    on_disk = named or ([] if sources else repository.names_on_disk())
    # With workers > 1 this process is the engine and the front ends are processes of their own.
    expect_repository_models(config.model_repository, on_disk, [s.name for s in sources],
                             front_ends=config.worker_count())
    try:
        for name in on_disk + [s.name for s in sources]:
            repository.load(name)
    except Exception:
        repository.close()
        raise
    if config.management_token is None:
        log.warning("management routes are open: set management_token in the server config to guard them")
    return LoopserveApp(repository, max_body_bytes=config.http.max_body_bytes,
                        management_token=config.management_token, poll_s=config.repository_poll_s,
                        load_new_models=not config.models, overload_wait_ms=config.http.overload_wait_ms,
                        overload_min_connections=config.http.overload_min_connections, store=config.store)


def serve(config: ServerConfig) -> int:
    configure_logging(config.log_level)
    sys.setswitchinterval(config.gil_switch_interval_us / 1e6)
    app = build_app(config)
    # What start-up built lives as long as the server: keep the collector from walking it
    # again in every full collection (pauses that land in the tail latency).
    gc.collect()
    gc.freeze()
    # Each request allocates a few hundred short-lived objects that die young without cycles;
    # at Python's default (a collection every 700 allocations) the collector ran ~every other
    # request. 50,000 measured 2-11% more req/s at c=64 (wrk, JSON) in side-by-side rounds.
    gc.set_threshold(50_000, 20, 100)
    heap.large_buffers_from_mmap()  # server/heap.py: large bodies' memory goes back to the system
    log.info("serving", extra={"host": config.http.host, "port": config.http.port, "workers": config.worker_count(),
                               "models": [f"{m.name}:{m.version}" for m in app.repository.models()]})
    engine = native = None
    if config.worker_count() > 1:
        # This process becomes the engine: the front ends take the public port, and the
        # engine's own routes (all but infer, which travels natively) answer on a Unix socket.
        engine = MultiProcessServer(app, workers=config.worker_count(), host=config.http.host, port=config.http.port,
                                    http=config.http, gil_switch_interval_us=config.gil_switch_interval_us,
                                    log_level=config.log_level)
        where = {"uds": engine.engine_uds, "http": "httptools"}  # only our front ends connect to it
    elif config.http.native_for(1):
        # The engine's native server takes the public port and hands what it does not answer
        # to this process's uvicorn, which listens on nothing public (server/native_infer.py).
        import os
        import socket
        import tempfile

        from loopserve.server.native_infer import InProcessNativeInfer

        family = socket.AF_INET6 if ":" in config.http.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.http.host, config.http.port))
        native = InProcessNativeInfer(app, sock, config.http)
        workdir = tempfile.mkdtemp(prefix="loopserve-")
        where = {"uds": os.path.join(workdir, "handoff.sock"), **uvicorn_settings(config.http)}
    else:
        # The public port: the connection limits of the config (server/limits.py).
        where = {"host": config.http.host, "port": config.http.port, **uvicorn_settings(config.http)}
    server = uvicorn.Server(uvicorn.Config(
        app, **where, loop="uvloop", lifespan="on",
        log_config=None, access_log=False, timeout_graceful_shutdown=config.http.graceful_shutdown_s,
        # Not behind a proxy by default: skip the per-request X-Forwarded-* middleware.
        proxy_headers=False, server_header=False,
    ))
    # uvicorn re-raises SIGTERM after its graceful shutdown, to the handler that was there
    # before it; a graceful stop is a success, so that handler lets the process exit 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    if native is not None:
        native.serve_with(server)
    try:
        server.run()
    finally:
        if engine is not None:
            engine.cleanup()
        if native is not None:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    return 0
