"""The demo: build the tiny MLP as an ONNX model repository, serve it over HTTP with
`loopserve serve --config configs/demo.yaml`, drive concurrent clients at it, write a new
version into the repository halfway (the server swaps it in under load), print what the
server did, and stop it with SIGTERM."""

from __future__ import annotations

import http.client
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import numpy as np

from loopserve import zoo
from loopserve.loadgen import ClientLoops, Tally

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "demo.yaml"
SWAP_WAIT_S = 120.0  # how long the clients go on past --seconds for the new version to answer


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_repository(workdir: Path) -> Path:
    repo = workdir / "models"
    zoo.write_model_dir(repo, "mlp", zoo.tiny_mlp(), fmt="onnx", max_batch_size=64, max_queue_delay_us=500,
                        extra_config="threads: 1\n")
    return repo


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Waits until a `loopserve serve` process answers ready; raises if it exits or is slow."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the server did not become ready")


def _get_json(port: int, path: str):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    return msgspec.json.decode(conn.getresponse().read())


class Traffic(msgspec.Struct):
    tally: Tally  # every request sent, and what became of it
    latencies: list[float]  # of the requests answered 200
    versions: list[tuple[float, int]]  # (seconds since start, version that answered)
    seconds: float  # how long the clients ran


def _drive(port: int, seconds: float, clients: int, until_swapped: bool = False) -> Traffic:
    """`clients` clients for `seconds`; with until_swapped, on for at most SWAP_WAIT_S more
    until a version after 1 has answered, so that a slow machine shows the swap too."""
    begin = time.monotonic()
    latencies: list[list[float]] = [[] for _ in range(clients)]  # per client: no lock needed
    versions: list[list[tuple[float, int]]] = [[] for _ in range(clients)]
    rngs = [np.random.default_rng(i) for i in range(clients)]

    def body(client: int, _n: int) -> bytes:
        return msgspec.json.encode({"inputs": [{"name": zoo.INPUT, "shape": [1, 32], "datatype": "FP32",
                                                "data": rngs[client].random(32, dtype=np.float32).tolist()}]})

    def record(client: int, answer: bytes, latency: float) -> None:
        latencies[client].append(latency)
        versions[client].append((time.monotonic() - begin, int(msgspec.json.decode(answer)["model_version"])))

    def swapped() -> bool:
        return any(v and v[-1][1] > 1 for v in versions)

    with ClientLoops(f"http://127.0.0.1:{port}", "/v2/models/mlp/infer", body, clients, on_answer=record) as loops:
        time.sleep(seconds)
        if until_swapped and not swapped():
            _say(f"version 2 is not serving yet after {seconds:.0f} s: driving on until it answers")
            give_up = time.monotonic() + SWAP_WAIT_S
            while not swapped() and time.monotonic() < give_up:
                time.sleep(0.05)
    return Traffic(loops.tally, [x for c in latencies for x in c], [v for c in versions for v in c],
                   time.monotonic() - begin)


def _swap_midway(repo: Path, after_s: float) -> threading.Timer:
    """Writes version 2 (other weights) into the repository halfway: the server notices and
    swaps it in under load."""
    def write():
        staging = repo / "mlp" / ".incoming-2"  # not a version directory until it is whole
        zoo.export_onnx(zoo.tiny_mlp(seed=1), staging / "model.onnx")
        staging.rename(repo / "mlp" / "2")
        _say("wrote version 2 into the repository; the server picks it up by itself")

    timer = threading.Timer(after_s, write)
    timer.start()
    return timer


def run_demo(workdir: str, seconds: float, concurrency: int, port: int = 8000) -> int:
    workdir_path = Path(workdir)
    repo = workdir_path / "models"
    shutil.rmtree(repo / "mlp", ignore_errors=True)
    _say(f"building the tiny MLP (32 -> 64 -> 2) as an ONNX model in {repo / 'mlp'}")
    build_repository(workdir_path)
    _say(f"starting: loopserve serve --config {CONFIG} --port {port}")
    proc = subprocess.Popen([sys.executable, "-m", "loopserve.cli", "serve", "--config", str(CONFIG),
                             "--model-repository", str(repo), "--port", str(port)],
                            stderr=open(workdir_path / "server.log", "w"))
    try:
        wait_ready(port, proc)
        _say(f"serving on http://127.0.0.1:{port} (logs: {workdir_path / 'server.log'}); "
             f"{concurrency} HTTP clients for {seconds:.0f} s")
        swap = _swap_midway(repo, seconds / 2)
        traffic = _drive(port, seconds, concurrency, until_swapped=True)
        swap.join()
        stats = _get_json(port, "/v2/models/mlp/stats")["model_stats"]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    tally = traffic.tally
    lat_ms = np.array(traffic.latencies or [np.nan]) * 1e3
    _say(f"{tally.summary()}: {tally.ok / traffic.seconds:,.0f} req/s answered, "
         f"latency p50 {np.percentile(lat_ms, 50):.2f} ms, p99 {np.percentile(lat_ms, 99):.2f} ms")
    for failure in tally.failures:
        _say(f"failed: {failure}")
    for version in sorted({v for _, v in traffic.versions}):
        times = [t for t, v in traffic.versions if v == version]
        _say(f"version {version} answered {len(times):,} requests, from {min(times):.1f} s to {max(times):.1f} s")
    for s in stats:
        batches = {b["batch_size"]: b["compute_infer"]["count"] for b in s["batch_stats"]}
        _say(f"version {s['version']} ran {s['execution_count']:,} batches for {s['inference_count']:,} rows; "
             "most common sizes: " + ", ".join(f"{size}x{k}" for size, k in sorted(batches.items(),
                                                                                  key=lambda kv: -kv[1])[:5]))
    _say(f"server stopped by SIGTERM, exit code {code}")
    _say(f"serve it yourself: loopserve serve --config {CONFIG.relative_to(Path.cwd()) if CONFIG.is_relative_to(Path.cwd()) else CONFIG}")
    lossless = tally.failed == 0 and tally.crashed_clients == 0 and tally.accounted == tally.sent
    return 0 if lossless and code == 0 else 1
