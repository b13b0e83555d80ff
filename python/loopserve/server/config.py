"""The server's own config file (`loopserve serve --config FILE`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from msgspec import Meta, Struct

from loopserve.config import load_config
from loopserve.serving.registry_source import ModelSource


class HttpConfig(Struct, forbid_unknown_fields=True, frozen=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8000
    # Larger request bodies are refused with 413 before they are read.
    max_body_bytes: Annotated[int, Meta(ge=1)] = 64 << 20
    # How long SIGTERM waits for in-flight requests before closing connections.
    graceful_shutdown_s: Annotated[float, Meta(ge=0)] = 30.0
    # With workers > 1: the size of each of the two shared-memory rings between a front end and
    # the engine (requests one way, responses the other). A request or response may take up to
    # half of it; 0: twice max_body_bytes plus 1 MiB, so that any accepted body fits.
    channel_bytes: Annotated[int, Meta(ge=0)] = 0
    # What a client on a public port may hold (server/limits.py). A request's head (request line
    # and headers) must arrive within header_timeout_s of the connection opening or of its first
    # byte, and be at most max_header_bytes (else 431); its body within body_timeout_s of the
    # head (else 408, and the connection closes). An idle keep-alive connection closes after
    # keep_alive_s. Past max_connections open connections (per process), a new one is answered
    # 503 and closed.
    header_timeout_s: Annotated[float, Meta(gt=0)] = 10.0
    body_timeout_s: Annotated[float, Meta(gt=0)] = 60.0
    keep_alive_s: Annotated[float, Meta(gt=0)] = 5.0
    # With the native infer path: a connection whose answer the client takes nothing of for this
    # long (it does not read) is closed, and the memory its answer held goes back.
    send_timeout_s: Annotated[float, Meta(gt=0)] = 30.0
    max_header_bytes: Annotated[int, Meta(ge=1024)] = 64 << 10
    max_connections: Annotated[int, Meta(ge=1)] = 2048
    # Overload (server/admission.py): while a process's event loop runs more than
    # overload_wait_ms behind (how long a request waits before the process can read it), an
    # infer request is refused at once with 429 and Retry-After, before its body is decoded;
    # only while the process holds at least overload_min_connections open connections (a stall
    # with fewer clients is no backlog to shed: a turn of 64 requests takes a few ms, so a loop
    # later than the budget with fewer is a stall, such as a hot swap or a busy machine, not
    # overload). 50 ms: well inside the batcher's 1 s queue timeout, and above how late the loop
    # ran on a loaded 2-core box far past saturation (DESIGN.md, "Overload").
    overload_wait_ms: Annotated[float, Meta(gt=0)] = 50.0
    overload_min_connections: Annotated[int, Meta(ge=1)] = 64
    # With workers > 1: how long (µs) the engine's ingress polls its rings before it sleeps, and
    # a front end with few clients (at most 4 connections) polls for its answer, instead of
    # waiting to be woken. On a virtual machine a halted core takes tens of µs to wake, more
    # than a quick model's whole hop, so a host with idle cores may want 100; the ingress's
    # window adapts (it closes when polling does not pay or the front ends are busy) and a
    # poll ends when another thread wants its core. 0 (the default): never. Measured on a
    # shared 2-core box, polling cost more than it saved (DESIGN.md, "The hop to the engine").
    spin_us: Annotated[int, Meta(ge=0, le=10_000)] = 0
    # The engine's native core owns the public port and answers the common infer request itself
    # (numeric tensors, JSON or binary: csrc/http/), with no Python per request; every other
    # request, and any connection that does not send a whole request quickly, is handed with what
    # was read to a front end (at workers 1: to the process's own uvicorn), which serves it as
    # always (DESIGN.md, "Native infer path"). Unset (the default): on with workers > 1, where
    # it takes out the hop to the engine (a lone client's p50 0.4-0.9x the Starlette baseline's
    # against 1.5-2.2x, 2.5-3.3x Triton's req/s at 64 clients against 1.35-1.6x: DESIGN.md);
    # off with one process, which serves the in-process API's way.
    native_infer: bool | None = None

    def native_for(self, workers: int) -> bool:
        """Whether the engine's native server takes the port, at this many front ends."""
        return self.native_infer if self.native_infer is not None else workers > 1

    def channel_size(self) -> int:
        return self.channel_bytes or 2 * self.max_body_bytes + (1 << 20)


class ServerConfig(Struct, forbid_unknown_fields=True, frozen=True):
    # A Triton-style model repository: <dir>/<model>/config.yaml and <dir>/<model>/<version>/model.*
    # A relative path is taken from the config file's directory.
    model_repository: str | None = None
    # Models to load at start: names in the repository, or {name, source: registry://NAME@ALIAS}
    # (served from the registry, following its aliases). Empty: every model in the repository.
    models: list[str | ModelSource] = []
    # The lifecycle store (registry, tracking, data): a directory or a postgresql:// URL; default
    # $LOOPSERVE_STORE, else ./.loopserve. A relative path is taken from the config file's directory.
    store: str | None = None
    http: HttpConfig = HttpConfig()
    # HTTP front-end processes. 1: one process serves everything (as the in-process API does).
    # N > 1: N front ends parse and encode, one engine process holds the models, batchers,
    # routing, monitors and feedback, and requests travel between them through shared memory.
    # auto: one per core this process may use (affinity and cgroup quota), at most 8 (README,
    # "Several cores", says how that was measured).
    workers: Annotated[int, Meta(ge=1, le=256)] | Literal["auto"] = "auto"

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # How often the repository is checked for changed or new models (loaded without a
    # restart); 0: never.
    repository_poll_s: Annotated[float, Meta(ge=0)] = 2.0
    # Bearer token for the management routes (repository load/unload, traffic changes).
    # Unset: they are open, as Triton's are; anyone who can reach the port can use them.
    management_token: str | None = None
    # How long a thread may hold the GIL while another waits for it. Python's 5 ms default
    # lets a busy event loop keep the batcher's workers from starting and finishing batches
    # (the heavy MLP served at 128 clients: 0.52 of the direct rows/s at 5 ms, 0.69 at 200 us).
    gil_switch_interval_us: Annotated[int, Meta(ge=1)] = 200

    def worker_count(self) -> int:
        if self.workers != "auto":
            return self.workers
        from loopserve.thread_budget import usable_cores

        return max(1, min(8, usable_cores().usable))


def load_server_config(path: str | Path) -> ServerConfig:
    path = Path(path)
    config = load_config(path, ServerConfig)
    import msgspec

    if config.model_repository and not Path(config.model_repository).is_absolute():
        config = msgspec.structs.replace(config, model_repository=str(path.parent / config.model_repository))
    if config.store and "://" not in config.store and not Path(config.store).is_absolute():
        config = msgspec.structs.replace(config, store=str(path.parent / config.store))
    return config
