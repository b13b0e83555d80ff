import os
import random
import socket
from pathlib import Path

# Triton kernels run on the CPU in tests; the variable is read when @triton.jit runs.
os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest

from loopserve import DynamicBatching, ModelConfig, TensorConfig, zoo


def vector_config(name="m", width=4, max_batch_size=32, datatype="FP32", out_width=None, instances=1,
                  **batching) -> ModelConfig:
    """A model taking x[width] and returning y[out_width] per row."""
    return ModelConfig(
        name=name,
        max_batch_size=max_batch_size,
        inputs=[TensorConfig("x", datatype, [width])],
        outputs=[TensorConfig("y", datatype, [out_width or width])],
        dynamic_batching=DynamicBatching(**batching),
        instances=instances,
    )


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory):
    """The tiny MLP as ONNX, torch.export and TorchScript model directories."""
    root = tmp_path_factory.mktemp("repo")
    module = zoo.tiny_mlp()
    zoo.write_model_dir(root, "mlp_onnx", module, fmt="onnx")
    zoo.write_model_dir(root, "mlp_pt2", module, fmt="pt2")
    zoo.write_model_dir(root, "mlp_ts", module, fmt="torchscript")
    return root


@pytest.fixture
def mlp_repository(model_repo, tmp_path):
    """A repository (under tmp_path/models) serving the tiny MLP as `mlp`, loaded."""
    import shutil

    from loopserve.serving.repository import ModelRepository

    root = tmp_path / "models"
    shutil.copytree(model_repo / "mlp_onnx", root / "mlp")
    repository = ModelRepository(root)
    repository.load("mlp")
    return repository


@pytest.fixture(scope="session")
def tiny_reference():
    """f(x) of the tiny MLP, computed directly with torch."""
    import torch

    module = zoo.tiny_mlp()

    def f(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return f


_ports = random.Random()  # its own generator: a test seeding `random` must not replay ports


def wait_until(condition, what, timeout=60):
    """Polls `condition` until it holds; the deadline is generous, never the synchronisation."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def free_port(count: int = 1) -> int:
    """A loopback TCP port free now (the first of `count` consecutive ones), for a server that a
    test starts in another process. Taken below the kernel's ephemeral range
    (ip_local_port_range), where no outgoing connection and no bind to port 0 can take it between
    this check and the server's own bind; a port found by binding port 0 is in that range, and any
    of the suite's client connections could take it."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    low = max(1024, ephemeral_low - 12_000)
    if ephemeral_low - low < 1_000:  # no room below the range: from the kernel's choice, as usual
        low, ephemeral_low = ephemeral_low, 65536
    for _ in range(200):
        port = _ports.randrange(low, ephemeral_low - count + 1)
        sockets = []
        try:
            for p in range(port, port + count):
                sockets.append(socket.socket())
                sockets[-1].bind(("127.0.0.1", p))
        except OSError:
            continue  # one is in use: another run
        finally:
            for sock in sockets:
                sock.close()
        return port
    raise RuntimeError(f"no {count} free consecutive ports in [{low}, {ephemeral_low})")


class RunningServer:
    """A real loopserve HTTP server on a free loopback port, in a thread of this process.

    workers > 1: this process is the engine (its routes on a Unix socket, in the thread), and
    `workers` front-end processes share the port, as `loopserve serve --workers N` runs them."""

    def __init__(self, app, workers: int = 1, http=None, native_infer: bool | None = None):
        import socket
        import threading

        import msgspec
        import uvicorn

        from loopserve.server.config import HttpConfig
        from loopserve.server.limits import uvicorn_settings

        self.app = app
        self.workers = workers
        self.engine = None
        self.native = None  # workers 1 with native_infer: server/native_infer.py's InProcessNativeInfer
        # The connection limits of `http` (a test's own, or the defaults) apply as `loopserve serve` applies them.
        http = msgspec.structs.replace(http or HttpConfig(), max_body_bytes=app.infer.max_body_bytes,
                                       graceful_shutdown_s=10)
        if native_infer is not None:
            http = msgspec.structs.replace(http, native_infer=native_infer)
        native_infer = http.native_for(workers)
        if workers > 1:
            from loopserve.server.supervisor import MultiProcessServer

            self.engine = MultiProcessServer(app, workers=workers, host="127.0.0.1", port=0, http=http,
                                             gil_switch_interval_us=200, log_level="warning")
            self.port = self.engine.port
            where = {"uds": self.engine.engine_uds}
            sockets = None
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
            where, sockets = {}, [sock]
            if native_infer:  # the native server takes the port; uvicorn what it hands over
                import tempfile

                from loopserve.server.native_infer import InProcessNativeInfer

                self.native = InProcessNativeInfer(app, sock, http)
                self._workdir = tempfile.mkdtemp(prefix="loopserve-test-")
                # as `loopserve serve` runs it: no `server` header (the native answers have none)
                where, sockets = {"uds": f"{self._workdir}/handoff.sock", "server_header": False}, None
        self.url = f"127.0.0.1:{self.port}"
        self.base_url = f"http://{self.url}"
        # The engine's Unix socket (workers > 1) keeps uvicorn's defaults: only the front ends face clients.
        limits = uvicorn_settings(http) if workers == 1 else {"http": "httptools"}
        self.server = uvicorn.Server(uvicorn.Config(app, loop="uvloop", lifespan="on", log_config=None,
                                                    access_log=False, **limits, **where))
        if self.native is not None:
            self.native.serve_with(self.server)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": sockets}, daemon=True)
        self.thread.start()
        import time

        deadline = time.monotonic() + 120  # front-end processes start slowly on a loaded machine
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)

    @property
    def native_http(self):
        """The engine's native HTTP server (http.native_infer), or None."""
        if self.engine is not None:
            return self.engine.native_http
        return self.native.http if self.native is not None else None

    def request(self, method, path, body=b"", headers=None):
        """(status, headers, body) of one plain HTTP request."""
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=60)
        if self.engine is not None:
            self.engine.cleanup()
        if self.native is not None:
            import shutil

            shutil.rmtree(self._workdir, ignore_errors=True)


class PythonPathWorkers(int):
    """The `serve` fixture's third variant: workers 2 with http.native_infer off, so the front
    ends' own infer route serves every request (workers 2 takes the engine's native infer path by
    default, csrc/http/). An int, so tests that compare the workers count still can."""

    native = False


# The test modules whose server tests also run with the front ends' Python infer path (a third
# variant): those of the infer route, its errors and limits, and of what it feeds (stats, feedback).
PYTHON_PATH_VARIANT_MODULES = {"test_server", "test_server_errors", "test_hardening", "test_server_feedback",
                               "test_error_status", "test_native_http"}


@pytest.fixture(params=[1, 2, PythonPathWorkers(2)], ids=["workers1", "workers2", "workers2python"])
def serve(request):
    """serve(app) starts a server; all are stopped after the test. Every test that uses it runs
    twice: one process, and an engine with two HTTP front-end processes (infer answered by the
    engine's native path, the default); in the modules of PYTHON_PATH_VARIANT_MODULES a third
    time, with the front ends' Python infer path."""
    servers = []

    def start(app, http=None):
        servers.append(RunningServer(app, workers=int(request.param), http=http,
                                     native_infer=getattr(request.param, "native", None)))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session, started here (initdb + pg_ctl in a temp dir) and
    stopped at the end; skipped only where no server binaries exist."""
    from loopserve.store.local_postgres import LocalPostgres, find_bindir

    if find_bindir() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: `make setup` installs the Debian "
                    "package `postgresql`")
    with LocalPostgres() as server:
        yield server


@pytest.fixture
def postgres_store_url(postgres, tmp_path):
    """The URL of a fresh store on the session's PostgreSQL (its own database), blobs under tmp_path."""
    import uuid

    return postgres.create_database(f"t_{uuid.uuid4().hex[:12]}") + f"?dir={tmp_path / 'store'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request, tmp_path):
    """A fresh store's location on each backend: a directory (SQLite), then a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "store")
    return request.getfixturevalue("postgres_store_url")


@pytest.fixture(scope="session")
def drift_model_root(tmp_path_factory):
    """A repository with `mlp`, the tiny MLP (32 inputs, 2 logits), with a reference profile of
    standard normal inputs in its version directory: drift windows of at most 100,000 rows closed
    by hand (window_seconds 0), min_rows 1000; feedback by argmax in windows of 100 labels."""
    import torch

    from loopserve.monitor.profile import build_profile

    root = tmp_path_factory.mktemp("drift-models")
    module = zoo.tiny_mlp()
    reference = np.random.default_rng(0).standard_normal((20_000, 32)).astype(np.float32)
    with torch.no_grad():
        outputs = module(torch.from_numpy(reference)).numpy()
    model_dir = zoo.write_model_dir(root, "mlp", module, max_batch_size=256, extra_config=(
        "drift:\n  window_rows: 100000\n  window_seconds: 0\n  policy: {min_rows: 1000}\n"
        "feedback: {threshold: null, window_labels: 100}\n"))
    build_profile(reference, outputs=outputs, output_names=["y0", "y1"]).save(model_dir / "1")
    return root


def pytest_collection_modifyitems(config, items):
    """The Python-path variant of `serve` runs only in PYTHON_PATH_VARIANT_MODULES (time: the
    others do not exercise the infer route's HTTP handling), or in every module with
    LOOPSERVE_PYTHON_PATH_VARIANT=all in the environment."""
    if os.environ.get("LOOPSERVE_PYTHON_PATH_VARIANT") == "all":
        return
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        python_path = callspec is not None and getattr(callspec.params.get("serve"), "native", None) is False
        (drop if python_path and item.module.__name__.rpartition(".")[2] not in PYTHON_PATH_VARIANT_MODULES
         else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
