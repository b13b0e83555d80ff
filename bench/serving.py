"""Serving benchmark: loopserve side by side with NVIDIA Triton, and a no-batching floor.

Three servers, started one at a time on free loopback ports, all serving the same tiny MLP
(32 -> 64 -> 2, torch seed 0) as model "mlp" (input INPUT0 FP32 [32], output OUTPUT0 FP32 [2]):

  triton     NVIDIA Triton 2.51 (Python backend running the MLP in torch, dynamic batching,
             max_batch_size 64, max_queue_delay 500 µs), from `.anchors/triton/serve.sh PORT`
             (install with `shared/anchors/triton/setup.sh .anchors/triton`).
  baseline   bench/baseline_starlette.py: Starlette + uvicorn + msgspec + onnxruntime, one
             session.run per request, no batching, nothing in between. Its p50 at c=1 is the
             floor loopserve must come within 1.2x of.
  loopserve  `LOOPSERVE_CMD` (env var or --loopserve-cmd), a format string with {python},
             {repo}, {port}; the model repository is written by `loopserve.zoo.write_model_dir`
             (onnx, max_batch_size 64, max_queue_delay_us 500, threads 1).

A server that is not ready (`GET /v2/health/ready` == 200) within 60 s is skipped, with the
reason printed, and the others still run.

Each server is driven by the same clients, one after the other:

  wrk            a Lua script POSTs the JSON infer body (32 floats, shape [1, 32]); connections
                 = concurrency, threads = min(2, connections); req/s, p50 and p99 come from the
                 script's done() hook (wrk's own latency histogram).
  perf_analyzer  Triton's load generator (HTTP, binary tensors, batch 1, zero inputs); it needs
                 the model config and stats routes, so it does not run against the baseline.
                 Its stabilization (3 consecutive windows within -s %) never settles on a busy
                 2-core machine, and then it writes no report; we pass `-s 1000 --max-trials 3`
                 so it measures exactly 3 windows of duration/3 each, the same time as wrk.

Heavy MLP (--heavy, on by default; --no-heavy skips it, --servers none runs it alone): the issue's
"rows/s served ÷ in-process batch-64 limit >= 0.85" for zoo.heavy_mlp() (512 -> 2048 -> 2048 -> 2),
exported by zoo.write_model_dir (onnx, max_batch_size 64, max_queue_delay_us 2000, threads 1) as
model "heavy". The limit: onnxruntime (1 intra-op, 1 inter-op thread) on that file, session.run at
batch 64 in a loop for one window, in this process with no server running. Served: a fresh loopserve
(LOOPSERVE_CMD) on that repository, driven by wrk at c=64 and c=128 with [1, 512] bodies in two
forms side by side: JSON, and Triton's binary tensor form (JSON header with binary_data_size 2048 and
binary OUTPUT0, then the 2048 raw float32 bytes; Inference-Header-Content-Length, read by wrk's Lua
from a file); both are checked against torch first. rows/s = req/s, and the mean batch
(inference_count / execution_count) comes from the delta of `GET /v2/models/heavy/stats` over the
window. Direct and served windows alternate (3 rounds, quick 2,
--heavy-rounds N); per concurrency and form the ratio is the median of the per-round ratios.

c=1 latency A/B (--ab, on by default, also with --servers none; --no-ab skips it): one server at a
time makes "loopserve p50 ÷ baseline p50 at c=1" drift with machine state between the two runs. So
the baseline and loopserve (same commands and model as above) are started together on two ports,
checked and warmed up, then wrk -t1 -c1 windows of 2 s alternate: loopserve, baseline, loopserve,
baseline... (8 rounds, quick 4, --ab-rounds N). Reported: each round's p50s and the median of the
per-round ratios loopserve / baseline (target <= 1.20).

Client and server share the machine's cores, so absolute figures are what this box gives with
a load generator beside the server; compare servers through the ratios, measured in the same run.

    .venv/bin/python bench/serving.py [--quick] [--duration S] [--servers triton,baseline,loopserve|none]
                                      [--clients wrk,perf_analyzer] [--no-heavy] [--heavy-rounds N]
                                      [--no-ab] [--ab-rounds N] [--json results.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ANCHOR = REPO_ROOT / ".anchors" / "triton"
MODEL = "mlp"
N_IN = 32
READY_TIMEOUT_S = 60.0
DEFAULT_LOOPSERVE_CMD = "{python} -m loopserve.cli serve --model-repository {repo} --host 127.0.0.1 --port {port}"
HEAVY_MODEL = "heavy"
HEAVY_N_IN = 512
HEAVY_BATCH = 64
HEAVY_DELAY_US = 2000
HEAVY_CONCURRENCY = (64, 128)
HEAVY_BODIES = ("json", "binary")  # the request forms wrk sends to the heavy model
HEAVY_TARGET = 0.85
AB_ROUNDS = 8
AB_ROUNDS_QUICK = 4
AB_WINDOW_S = 2.0
AB_TARGET = 1.20


# -- machine ------------------------------------------------------------------------------


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"cpu": cpu, "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)),
            "load_avg_1m_at_start": load, "python": platform.python_version(), "platform": platform.platform()}


# -- servers ------------------------------------------------------------------------------


def free_port(span: int = 1) -> int:
    """A loopback port P with P .. P+span-1 all free (Triton takes gRPC on P+1, metrics on P+2)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + span > 65535:
            continue
        ok = True
        for p in range(port + 1, port + span):
            with socket.socket() as s:
                try:
                    s.bind(("0.0.0.0", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no free port range found")


class Server:
    """One server process: start() it, wait until ready(), stop() it (whole process group)."""

    def __init__(self, name: str, argv: list[str], port: int, *, env: dict | None = None, log_dir: Path):
        self.name, self.argv, self.port, self.env = name, argv, port, env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=REPO_ROOT, start_new_session=True)

    def ready(self, timeout_s: float = READY_TIMEOUT_S) -> str | None:
        """None once `GET /v2/health/ready` answers 200; otherwise why not."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                return f"exited with status {code} before it was ready; log tail:\n{self.log_tail()}"
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return None
                    last = f"HTTP {r.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(getattr(exc, "reason", exc))
            time.sleep(0.25)
        return f"not ready within {timeout_s:.0f} s (last: {last}); log tail:\n{self.log_tail()}"

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self._log.close()
        self.proc = None

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in lines[-n:]) or "    (empty log)"


def triton_server(log_dir: Path, _work: Path) -> Server:
    serve = ANCHOR / "serve.sh"
    if not serve.exists():
        raise FileNotFoundError(f"{serve} missing: run shared/anchors/triton/setup.sh {ANCHOR}")
    port = free_port(span=3)
    return Server("triton", [str(serve), str(port)], port, log_dir=log_dir)


def baseline_server(log_dir: Path, _work: Path) -> Server:
    port = free_port()
    argv = [sys.executable, str(REPO_ROOT / "bench" / "baseline_starlette.py"), "--port", str(port)]
    return Server("baseline", argv, port, log_dir=log_dir)


def echo_server(log_dir: Path, _work: Path) -> Server:
    port = free_port()
    return Server("echo", [sys.executable, str(REPO_ROOT / "bench" / "bare_echo.py"), "--port", str(port)], port,
                  log_dir=log_dir)


def server_cpu_s(server: Server) -> float | None:
    """CPU seconds (user + system) used so far by every process of the server's session (the
    engine and its front ends), from /proc."""
    if server.proc is None:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == server.proc.pid:  # field 6, the session id (start_new_session=True)
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def loopserve_server(log_dir: Path, work: Path, cmd: str, workers: int | None = None) -> Server:
    from loopserve import zoo

    repo = work / "loopserve-models"
    if not (repo / MODEL).exists():
        zoo.write_model_dir(repo, MODEL, zoo.tiny_mlp(), fmt="onnx", max_batch_size=64, max_queue_delay_us=500,
                            extra_config="threads: 1\n")
    port = free_port()
    line = cmd.format(python=shlex.quote(sys.executable), repo=shlex.quote(str(repo)), port=port)
    if workers is None:
        return Server("loopserve", shlex.split(line), port, log_dir=log_dir)
    return Server(f"loopserve-w{workers}", shlex.split(line) + ["--workers", str(workers)], port, log_dir=log_dir)


# -- clients ------------------------------------------------------------------------------


@dataclass
class Result:
    server: str
    client: str
    concurrency: int
    req_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    requests: int | None = None
    errors: int | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


def infer_row(n_in: int = N_IN) -> list[float]:
    return [round(0.01 * (i % 100), 2) for i in range(n_in)]


def infer_body(n_in: int = N_IN) -> str:
    return json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, n_in], "datatype": "FP32", "data": infer_row(n_in)}]})


def binary_infer_header(n_in: int = N_IN) -> bytes:
    """The JSON part of Triton's binary tensor form: INPUT0 as binary_data_size bytes after it,
    OUTPUT0 asked for as binary."""
    return json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, n_in], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 4 * n_in}}],
                       "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]},
                      separators=(",", ":")).encode()


def binary_infer_body(n_in: int = N_IN) -> tuple[bytes, int]:
    """(body, length of its JSON part): the JSON header, then the row as little-endian float32."""
    header = binary_infer_header(n_in)
    return header + struct.pack(f"<{n_in}f", *infer_row(n_in)), len(header)


WRK_JSON_REQUEST = """\
wrk.method = "POST"
wrk.body = [[%BODY%]]
wrk.headers["Content-Type"] = "application/json"
"""

# Lua strings hold any bytes: the binary body is read from a file opened "rb" (one read per wrk thread).
WRK_BINARY_REQUEST = """\
wrk.method = "POST"
local f = assert(io.open(%PATH%, "rb"))
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = "%HLEN%"
"""

WRK_DONE = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_JSON {\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %d, \\"p99_us\\": %d, " ..
    "\\"mean_us\\": %.1f, \\"max_us\\": %d, \\"err_status\\": %d, \\"err_connect\\": %d, " ..
    "\\"err_read\\": %d, \\"err_write\\": %d, \\"err_timeout\\": %d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, latency.max, e.status, e.connect, e.read, e.write, e.timeout))
end
"""


def wrk_script(work: Path, n_in: int = N_IN, name: str = "infer.lua") -> Path:
    """A wrk script POSTing the JSON infer body."""
    path = work / name
    path.write_text(WRK_JSON_REQUEST.replace("%BODY%", infer_body(n_in)) + "\n" + WRK_DONE)
    return path


def wrk_binary_script(work: Path, n_in: int = N_IN, name: str = "infer-binary.lua") -> Path:
    """A wrk script POSTing the binary tensor form; the body itself goes to `name`.body."""
    body, header_len = binary_infer_body(n_in)
    body_path = work / f"{name}.body"
    body_path.write_bytes(body)
    path = work / name
    lua = WRK_BINARY_REQUEST.replace("%PATH%", json.dumps(str(body_path))).replace("%HLEN%", str(header_len))
    path.write_text(lua + "\n" + WRK_DONE)
    return path


def run_wrk(server: Server, concurrency: int, duration_s: float, script: Path, model: str = MODEL,
            threads: int = 2) -> Result:
    res = Result(server.name, "wrk", concurrency)
    threads = min(threads, concurrency)
    argv = ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{max(1, round(duration_s))}s", "--latency",
            "--timeout", "5s", "-s", str(script), f"{server.url}/v2/models/{model}/infer"]
    cpu_before = server_cpu_s(server)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60)
    cpu_after = server_cpu_s(server)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        res.note = f"wrk failed (status {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-300:]}"
        return res
    w = json.loads(line[len("WRK_JSON "):])
    res.requests = w["requests"]
    res.errors = w["err_status"] + w["err_connect"] + w["err_read"] + w["err_write"] + w["err_timeout"]
    res.req_s = w["requests"] / (w["duration_us"] / 1e6)
    res.p50_ms, res.p99_ms = w["p50_us"] / 1e3, w["p99_us"] / 1e3
    res.extra = {"mean_ms": w["mean_us"] / 1e3, "max_ms": w["max_us"] / 1e3, "threads": threads}
    if cpu_before is not None and cpu_after is not None and w["requests"]:
        res.extra["server_cpu_us_per_req"] = (cpu_after - cpu_before) / w["requests"] * 1e6
    if res.errors:
        res.note = f"{res.errors} errors (non-2xx {w['err_status']}, timeouts {w['err_timeout']})"
    return res


def run_perf_analyzer(server: Server, concurrency: int, duration_s: float, work: Path) -> Result:
    res = Result(server.name, "perf_analyzer", concurrency)
    pa = ANCHOR / "perf_analyzer"
    if not pa.exists():
        res.note = f"{pa} missing"
        return res
    csv_path = work / f"pa-{server.name}-{concurrency}.csv"
    csv_path.unlink(missing_ok=True)
    window_ms = max(500, int(duration_s * 1000 / 3))
    argv = [str(pa), "-m", MODEL, "-u", f"127.0.0.1:{server.port}", "-i", "http", "-b", "1",
            "--concurrency-range", f"{concurrency}:{concurrency}", "--input-data", "zero",
            "--measurement-interval", str(window_ms), "--max-trials", "3", "-s", "1000",
            "--percentile=99", "-f", str(csv_path)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s * 3 + 60)
    except subprocess.TimeoutExpired:
        res.note = "perf_analyzer timed out"
        return res
    if proc.returncode != 0 or not csv_path.exists():
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        res.note = f"perf_analyzer failed (status {proc.returncode}): {tail[-300:]}"
        return res
    header, row = [ln.split(",") for ln in csv_path.read_text().strip().splitlines()[:2]]
    rec = dict(zip(header, row))
    res.req_s = float(rec["Inferences/Second"])
    res.p50_ms, res.p99_ms = float(rec["p50 latency"]) / 1e3, float(rec["p99 latency"]) / 1e3
    res.extra = {k: float(v) for k, v in rec.items() if k not in ("Concurrency",)}
    for line in proc.stdout.splitlines():
        if "Request count:" in line:
            res.requests = int(line.split(":")[1])
            break
    res.errors = 0  # perf_analyzer aborts on any failed request
    return res


def reference_output(module=None, n_in: int = N_IN) -> list[float]:
    import torch

    from loopserve import zoo

    module = module if module is not None else zoo.tiny_mlp()
    x = torch.tensor([infer_row(n_in)], dtype=torch.float32)
    with torch.inference_mode():
        return module(x).ravel().tolist()


def check_answer(server: Server, expected: list[float], model: str = MODEL, n_in: int = N_IN) -> str | None:
    """None if one JSON infer answers the reference MLP's output; otherwise what went wrong."""
    req = urllib.request.Request(f"{server.url}/v2/models/{model}/infer", data=infer_body(n_in).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            got = json.loads(r.read())["outputs"][0]["data"]
    except Exception as exc:
        return f"infer failed: {exc}"
    return compare_answer(got, expected)


def compare_answer(got: list[float], expected: list[float]) -> str | None:
    if len(got) != len(expected) or any(abs(a - b) > 1e-4 for a, b in zip(got, expected)):
        return f"wrong answer: {got} (expected {expected})"
    return None


def check_binary_answer(server: Server, expected: list[float], model: str = MODEL, n_in: int = N_IN) -> str | None:
    """None if the exact body wrk sends in binary form answers 200 with a binary OUTPUT0 that
    matches the reference; otherwise what went wrong."""
    body, header_len = binary_infer_body(n_in)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("POST", f"/v2/models/{model}/infer", body=body,
                     headers={"Content-Type": "application/octet-stream",
                              "Inference-Header-Content-Length": str(header_len)})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            return f"binary infer: HTTP {resp.status}: {data[:200]!r}"
        json_len = resp.getheader("Inference-Header-Content-Length")
        if json_len is None:
            return f"binary infer: no Inference-Header-Content-Length in the answer: {data[:200]!r}"
        out = json.loads(data[:int(json_len)])["outputs"][0]
        size = out["parameters"]["binary_data_size"]
        raw = data[int(json_len):int(json_len) + size]
        got = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    except Exception as exc:
        return f"binary infer failed: {exc!r}"
    finally:
        conn.close()
    wrong = compare_answer(got, expected)
    return f"binary infer: {wrong}" if wrong else None


def warm_up(server: Server, script: Path, model: str = MODEL) -> None:
    """A short burst so that first-request costs (Python backend stub, lazy init) are not measured."""
    subprocess.run(["wrk", "-t", "2", "-c", "16", "-d", "1s", "-s", str(script), f"{server.url}/v2/models/{model}/infer"],
                   capture_output=True, timeout=60)


# -- heavy MLP: served rows/s against the model called directly at batch 64 -----------------


def heavy_repo(work: Path) -> Path:
    from loopserve import zoo

    repo = work / "heavy-models"
    if not (repo / HEAVY_MODEL).exists():
        zoo.write_model_dir(repo, HEAVY_MODEL, zoo.heavy_mlp(), fmt="onnx", max_batch_size=HEAVY_BATCH,
                            max_queue_delay_us=HEAVY_DELAY_US, extra_config="threads: 1\n")
    return repo


def heavy_server(log_dir: Path, repo: Path, cmd: str) -> Server:
    port = free_port()
    line = cmd.format(python=shlex.quote(sys.executable), repo=shlex.quote(str(repo)), port=port)
    return Server("loopserve-heavy", shlex.split(line), port, log_dir=log_dir)


def heavy_session(repo: Path):
    """The in-process limit: onnxruntime on the exported file, with the threads the server gets."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(repo / HEAVY_MODEL / "1" / "model.onnx"), options,
                                providers=["CPUExecutionProvider"])


def direct_rows_per_s(session, seconds: float) -> float:
    """`session.run` at batch 64 (the request row, 64 times) in a loop for `seconds`; no server running."""
    import numpy as np

    feed = {session.get_inputs()[0].name: np.tile(np.asarray(infer_row(HEAVY_N_IN), np.float32), (HEAVY_BATCH, 1))}
    for _ in range(3):
        session.run(None, feed)
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        session.run(None, feed)
        n += 1
        now = time.perf_counter()
        if now >= deadline:
            return n * HEAVY_BATCH / (now - start)


def model_counts(server: Server, model: str) -> tuple[int, int, int, int]:
    """From `GET /v2/models/{model}/stats`: inference_count, execution_count, and the count and
    compute_infer ns of full (max_batch_size) batches."""
    with urllib.request.urlopen(f"{server.url}/v2/models/{model}/stats", timeout=10) as r:
        stats = json.loads(r.read())["model_stats"][0]
    full = next((b["compute_infer"] for b in stats.get("batch_stats", []) if b["batch_size"] == HEAVY_BATCH),
                {"count": 0, "ns": 0})
    return int(stats["inference_count"]), int(stats["execution_count"]), int(full["count"]), int(full["ns"])


def served_window(server: Server, concurrency: int, duration_s: float, script: Path, body: str) -> Result:
    """wrk at `concurrency` with one request form (`body`: json or binary; batch-1 requests:
    req/s = rows/s); in extra, the mean batch over the window and the model's ms per full batch
    (against direct, it shows the model short of CPU)."""
    before = model_counts(server, HEAVY_MODEL)
    res = run_wrk(server, concurrency, duration_s, script, model=HEAVY_MODEL)
    rows, batches, full, full_ns = (a - b for a, b in zip(model_counts(server, HEAVY_MODEL), before))
    res.extra.update(body=body, rows=rows, batches=batches, mean_batch=rows / max(batches, 1),
                     full_batch_ms=full_ns / full / 1e6 if full else None)
    return res


def served_round(server: Server, concurrency: list[int], duration_s: float, scripts: dict[str, Path],
                 expected: list[float]) -> list[Result]:
    """One fresh server: ready, checked (JSON and binary), warmed up, then one wrk window per
    concurrency and request form, the forms side by side."""
    server.start()
    try:
        why = server.ready()
        if why is not None:
            raise RuntimeError(why)
        for check in (check_answer, check_binary_answer):
            wrong = check(server, expected, model=HEAVY_MODEL, n_in=HEAVY_N_IN)
            if wrong is not None:
                print(f"  [heavy] WARNING: {wrong}")
        warm_up(server, scripts["json"], model=HEAVY_MODEL)
        return [served_window(server, c, duration_s, scripts[body], body) for c in concurrency for body in scripts]
    finally:
        server.stop()


def run_heavy(work: Path, log_dir: Path, cmd: str, duration_s: float, rounds: int) -> dict:
    """Alternates a direct window (no server running) and a served round (a fresh server, one wrk
    window per concurrency); per concurrency, the ratio is the median of the per-round ratios."""
    from loopserve import zoo

    repo = heavy_repo(work)
    scripts = {"json": wrk_script(work, HEAVY_N_IN, "heavy.lua"),
               "binary": wrk_binary_script(work, HEAVY_N_IN, "heavy-binary.lua")}
    expected = reference_output(zoo.heavy_mlp(), HEAVY_N_IN)
    session = heavy_session(repo)
    out = {"model": "heavy_mlp 512-2048-2048-2, onnx, threads 1", "max_batch_size": HEAVY_BATCH,
           "max_queue_delay_us": HEAVY_DELAY_US, "concurrency": list(HEAVY_CONCURRENCY),
           "bodies": list(HEAVY_BODIES), "rounds": []}
    for i in range(rounds):
        direct = direct_rows_per_s(session, duration_s)
        print(f"  round {i + 1}: direct batch {HEAVY_BATCH} {direct:8.0f} rows/s", flush=True)
        server = heavy_server(log_dir, repo, cmd)
        if i == 0:
            print(f"  [heavy] {shlex.join(server.argv)}", flush=True)
        try:
            served = served_round(server, list(HEAVY_CONCURRENCY), duration_s, scripts, expected)
        except Exception as exc:
            out["skipped"] = f"served round {i + 1} failed: {exc}"
            print(f"  [heavy] skipped: {out['skipped']}")
            break
        for r in served:
            print(f"  round {i + 1}: served c={r.concurrency:<3} {r.extra.get('body', ''):<6} "
                  f"{fmt(r.req_s, '8.0f')} rows/s  "
                  f"mean batch {r.extra.get('mean_batch', 0):.1f}  {r.note}", flush=True)
        out["rounds"].append({"direct_rows_per_s": direct, "served": [asdict(r) for r in served]})
    out["summary"] = heavy_summary(out["rounds"])
    return out


def heavy_summary(rounds: list[dict]) -> list[dict]:
    """Per (concurrency, request form): medians of direct and served rows/s, of the per-round
    ratios, and of the mean batch."""
    rows = []
    for c in HEAVY_CONCURRENCY:
        for body in HEAVY_BODIES:
            per = [(rd["direct_rows_per_s"], s) for rd in rounds for s in rd["served"]
                   if s["concurrency"] == c and s["extra"].get("body") == body and s["req_s"]]
            if per:
                rows.append(heavy_row(c, body, per))
    return rows


def heavy_row(c: int, body: str, per: list[tuple[float, dict]]) -> dict:
    """One summary row from (direct rows/s, served result) pairs, one per round."""
    ratios = [s["req_s"] / d for d, s in per]
    return {"concurrency": c, "body": body,
            "direct_rows_per_s": statistics.median(d for d, _ in per),
            "served_rows_per_s": statistics.median(s["req_s"] for _, s in per),
            "ratio": statistics.median(ratios), "round_ratios": ratios,
            "mean_batch": statistics.median(s["extra"]["mean_batch"] for _, s in per),
            "direct_batch_ms": HEAVY_BATCH / statistics.median(d for d, _ in per) * 1e3,
            "served_batch_ms": median_or_none(s["extra"]["full_batch_ms"] for _, s in per),
            "p50_ms": statistics.median(s["p50_ms"] for _, s in per),
            "p99_ms": statistics.median(s["p99_ms"] for _, s in per),
            "errors": sum(s["errors"] or 0 for _, s in per)}


def median_or_none(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def print_heavy(heavy: dict) -> None:
    print(f"\nheavy MLP (512 -> 2048 -> 2048 -> 2, onnxruntime 1 thread, max_batch_size {HEAVY_BATCH}, "
          f"delay {HEAVY_DELAY_US} µs): served rows/s ÷ direct batch-{HEAVY_BATCH} rows/s, "
          f"median of {len(heavy['rounds'])} alternating rounds (target >= {HEAVY_TARGET:.2f})")
    print(f"{'conc':>4} {'body':<6} {'direct rows/s':>14} {'served rows/s':>14} {'ratio':>6} {'mean batch':>11} "
          f"{'64-batch ms':>15} {'p50 ms':>8} {'p99 ms':>8}  rounds")
    for row in heavy["summary"]:
        mark = "ok" if row["ratio"] >= HEAVY_TARGET else "BELOW TARGET"
        errors = f"; {row['errors']} errors" if row["errors"] else ""
        print(f"{row['concurrency']:>4} {row['body']:<6} {row['direct_rows_per_s']:>14.0f} "
              f"{row['served_rows_per_s']:>14.0f} {row['ratio']:>6.2f} {row['mean_batch']:>11.1f} "
              f"{fmt(row['served_batch_ms'], '6.2f'):>6} / {row['direct_batch_ms']:<6.2f} "
              f"{row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}  "
              + " ".join(f"{x:.2f}" for x in row["round_ratios"]) + f"  {mark}{errors}")
    print("64-batch ms: the model's time per 64-row batch, served / direct (served higher: the model "
          "thread short of CPU, e.g. beside the event loop and wrk)")
    if "skipped" in heavy:
        print(f"heavy: {heavy['skipped'].splitlines()[0]}")


# -- c=1 latency A/B: loopserve and the baseline up together, short wrk windows alternating --


def ab_servers(log_dir: Path, work: Path, cmd: str) -> tuple[Server, Server]:
    """loopserve and the baseline as in the main section, on two different ports, with their own logs."""
    loop = loopserve_server(log_dir, work, cmd)
    base = baseline_server(log_dir, work)
    while base.port == loop.port:
        base = baseline_server(log_dir, work)
    for server in (loop, base):
        server.log_path = log_dir / f"ab-{server.name}.log"
    return loop, base


def start_together(servers: tuple[Server, ...], script: Path, expected: list[float]) -> None:
    """Starts all at once, waits until each is ready (raises if one is not), checks and warms each."""
    for server in servers:
        server.start()
    for server in servers:
        why = server.ready()
        if why is not None:
            raise RuntimeError(f"{server.name}: {why}")
    for server in servers:
        wrong = check_answer(server, expected)
        if wrong is not None:
            print(f"  [ab] {server.name} WARNING: {wrong}")
        warm_up(server, script)


def ab_round(loop: Result, base: Result) -> dict:
    ratio = loop.p50_ms / base.p50_ms if loop.p50_ms and base.p50_ms else None
    return {"loopserve": asdict(loop), "baseline": asdict(base), "p50_ratio": ratio}


def run_ab(work: Path, log_dir: Path, cmd: str, rounds: int, script: Path, expected: list[float]) -> dict:
    """Both servers up at once; per round, wrk -t1 -c1 against loopserve, then against the baseline."""
    loop, base = ab_servers(log_dir, work, cmd)
    print(f"  [ab] {shlex.join(loop.argv)}\n  [ab] {shlex.join(base.argv)}", flush=True)
    out = {"concurrency": 1, "window_s": AB_WINDOW_S, "target": AB_TARGET, "rounds": []}
    try:
        start_together((loop, base), script, expected)
        for i in range(rounds):
            rd = ab_round(*(run_wrk(s, 1, AB_WINDOW_S, script) for s in (loop, base)))
            out["rounds"].append(rd)
            print(f"  round {i + 1}: p50 loopserve {fmt_us(rd['loopserve']['p50_ms'])} µs, baseline "
                  f"{fmt_us(rd['baseline']['p50_ms'])} µs, ratio {fmt(rd['p50_ratio'], '.2f')}  "
                  f"{rd['loopserve']['note']} {rd['baseline']['note']}", flush=True)
    except Exception as exc:
        out["skipped"] = str(exc)
        print(f"  [ab] skipped: {exc}")
    finally:
        loop.stop()
        base.stop()
    out["summary"] = ab_summary(out["rounds"])
    return out


def ab_summary(rounds: list[dict]) -> dict | None:
    ratios = [rd["p50_ratio"] for rd in rounds if rd["p50_ratio"] is not None]
    if not ratios:
        return None
    return {"p50_ratio": statistics.median(ratios), "round_ratios": ratios,
            "loopserve_p50_ms": statistics.median(rd["loopserve"]["p50_ms"] for rd in rounds if rd["p50_ratio"]),
            "baseline_p50_ms": statistics.median(rd["baseline"]["p50_ms"] for rd in rounds if rd["p50_ratio"]),
            "ok": statistics.median(ratios) <= AB_TARGET}


def fmt_us(ms: float | None) -> str:
    return fmt(None if ms is None else ms * 1e3, "6.0f")


def print_ab(ab: dict) -> None:
    print(f"\nc=1 latency A/B: loopserve and baseline up together, wrk -t1 -c1, {AB_WINDOW_S:g} s windows "
          f"alternating (loopserve, baseline, ...); loopserve p50 ÷ baseline p50, median of the per-round "
          f"ratios (target <= {AB_TARGET:.2f})")
    print(f"{'round':>5} {'loopserve p50 µs':>17} {'baseline p50 µs':>16} {'ratio':>6} "
          f"{'loopserve p99 µs':>17} {'baseline p99 µs':>16}")
    for i, rd in enumerate(ab["rounds"], 1):
        ls, bl = rd["loopserve"], rd["baseline"]
        print(f"{i:>5} {fmt_us(ls['p50_ms']):>17} {fmt_us(bl['p50_ms']):>16} {fmt(rd['p50_ratio'], '6.2f')} "
              f"{fmt_us(ls['p99_ms']):>17} {fmt_us(bl['p99_ms']):>16}")
    summary = ab["summary"]
    if summary is not None:
        mark = "ok" if summary["ok"] else "ABOVE TARGET"
        print(f"{'median':>5} {fmt_us(summary['loopserve_p50_ms']):>17} {fmt_us(summary['baseline_p50_ms']):>16} "
              f"{summary['p50_ratio']:>6.2f}  {mark}")
    if "skipped" in ab:
        print(f"ab: {ab['skipped'].splitlines()[0]}")


# -- report -------------------------------------------------------------------------------


def fmt(x: float | None, spec: str) -> str:
    if x is None:
        width = spec.split(".")[0]
        return "-".rjust(int(width) if width.isdigit() else 0)
    return format(x, spec)


def print_table(results: list[Result]) -> None:
    print(f"\n{'server':<13} {'client':<14} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'cpu µs/req':>10}  note")
    for r in results:
        print(f"{r.server:<13} {r.client:<14} {r.concurrency:>4} {fmt(r.req_s, '9.0f')} {fmt(r.p50_ms, '8.3f')} "
              f"{fmt(r.p99_ms, '8.3f')} {fmt(r.extra.get('server_cpu_us_per_req'), '10.0f')}  {r.note}")


def ratios(results: list[Result]) -> list[dict]:
    """Each non-Triton server against Triton per (client, concurrency); at c=1, p50 against the baseline (wrk)."""
    by = {(r.server, r.client, r.concurrency): r for r in results if r.req_s}
    out = []
    keys = sorted({(r.client, r.concurrency) for r in results}, key=lambda k: (k[0] != "wrk", k[0], k[1]))
    names = sorted({r.server for r in results if r.server.startswith("loopserve")}) + ["baseline"]
    for server in names:
        for client, c in keys:
            me, tri = by.get((server, client, c)), by.get(("triton", client, c))
            if me is None:
                continue
            echo = by.get(("echo", client, c))
            cpu, tri_cpu = me.extra.get("server_cpu_us_per_req"), tri.extra.get("server_cpu_us_per_req") if tri else None
            row = {"server": server, "client": client, "concurrency": c,
                   "req_s_vs_triton": me.req_s / tri.req_s if tri else None,
                   "p99_vs_triton": me.p99_ms / tri.p99_ms if tri and tri.p99_ms else None,
                   "req_s_vs_echo": me.req_s / echo.req_s if echo else None,
                   "cpu_vs_triton": cpu / tri_cpu if cpu and tri_cpu else None}
            base = by.get(("baseline", "wrk", 1))
            if server.startswith("loopserve") and client == "wrk" and c == 1 and base and base.p50_ms:
                row["p50_vs_baseline"] = me.p50_ms / base.p50_ms
            out.append(row)
    return out


def print_ratios(rows: list[dict], skipped: dict[str, str]) -> None:
    print(f"\n{'server':<13} {'client':<14} {'conc':>4} {'req/s ÷ Triton':>15} {'p99 ÷ Triton':>13} "
          f"{'req/s ÷ echo':>13} {'cpu ÷ Triton':>13}  (higher req/s, lower p99 and cpu are better)")
    for row in rows:
        extra = ""
        if "p50_vs_baseline" in row:
            extra = f"  p50 ÷ baseline p50 = {row['p50_vs_baseline']:.2f} (target <= 1.20)"
        print(f"{row['server']:<13} {row['client']:<14} {row['concurrency']:>4} {fmt(row['req_s_vs_triton'], '15.2f')} "
              f"{fmt(row['p99_vs_triton'], '13.2f')} {fmt(row.get('req_s_vs_echo'), '13.2f')} "
              f"{fmt(row.get('cpu_vs_triton'), '13.2f')}{extra}")
    if "loopserve" in skipped:
        print("loopserve: skipped, no loopserve ratios in this run")


# -- main ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description="loopserve vs NVIDIA Triton vs a no-batching Starlette baseline")
    parser.add_argument("--quick", action="store_true", help="3 s per measurement, concurrency 1 and 64 only")
    parser.add_argument("--duration", type=float, default=None, help="seconds per measurement (default 10, quick 3)")
    parser.add_argument("--concurrency", default=None, help="comma-separated (default 1,16,64,256; quick 1,64)")
    parser.add_argument("--servers", default="triton,echo,baseline,loopserve",
                        help="comma-separated subset, in order; loopserve-wN: loopserve with --workers N")
    parser.add_argument("--clients", default="wrk,perf_analyzer", help="comma-separated subset")
    parser.add_argument("--loopserve-cmd", default=os.environ.get("LOOPSERVE_CMD", DEFAULT_LOOPSERVE_CMD),
                        help="format string with {python}, {repo}, {port} (env LOOPSERVE_CMD)")
    parser.add_argument("--heavy", action=argparse.BooleanOptionalAction, default=True,
                        help="the heavy-MLP section: loopserve rows/s (wrk, c=64 and 128) ÷ onnxruntime called "
                             "directly at batch 64 (default on; --servers none runs it and the A/B alone)")
    parser.add_argument("--heavy-rounds", type=int, default=None,
                        help="alternating direct/served rounds (default 3, quick 2)")
    parser.add_argument("--ab", action=argparse.BooleanOptionalAction, default=True,
                        help="the c=1 latency A/B: loopserve and the baseline up together, alternating "
                             f"{AB_WINDOW_S:g} s wrk -c1 windows (default on, also with --servers none)")
    parser.add_argument("--ab-rounds", type=int, default=None,
                        help=f"A/B rounds (default {AB_ROUNDS}, quick {AB_ROUNDS_QUICK})")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args()

    duration = args.duration if args.duration is not None else (3.0 if args.quick else 10.0)
    concurrency = [int(c) for c in (args.concurrency or ("1,64" if args.quick else "1,16,64,256")).split(",")]
    servers = [s.strip() for s in args.servers.split(",") if s.strip() and s.strip() != "none"]
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    if "wrk" in clients and shutil.which("wrk") is None:
        print("wrk not found (apt-get install wrk); wrk runs skipped")
        clients.remove("wrk")
    heavy_rounds = args.heavy_rounds or (2 if args.quick else 3)
    if args.heavy and shutil.which("wrk") is None:
        print("wrk not found; heavy-MLP section skipped")
        args.heavy = False
    ab_rounds = args.ab_rounds or (AB_ROUNDS_QUICK if args.quick else AB_ROUNDS)
    if args.ab and shutil.which("wrk") is None:
        print("wrk not found; c=1 A/B section skipped")
        args.ab = False

    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable), "
          f"1-min load avg {info['load_avg_1m_at_start']:.2f} at start, Python {info['python']}")
    print(f"client and server share these {info['cores_usable']} cores (wrk / perf_analyzer run beside the server)")
    print(f"duration {duration:g} s per measurement, concurrency {concurrency}, servers {servers}, clients {clients}")
    if args.ab:
        print(f"c=1 A/B: loopserve and baseline together, {ab_rounds} rounds of {AB_WINDOW_S:g} s wrk -c1 windows each")
    if args.heavy:
        print(f"heavy MLP: wrk c={','.join(map(str, HEAVY_CONCURRENCY))}, {heavy_rounds} rounds of "
              f"{duration:g} s windows, direct and served alternating, JSON and binary requests")

    results: list[Result] = []
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = Path(tmp)
        log_dir = work / "logs"
        log_dir.mkdir()
        script = wrk_script(work)
        expected = reference_output()
        factories = {
            "triton": triton_server,
            "baseline": baseline_server,
            "echo": echo_server,
            "loopserve": lambda ld, w: loopserve_server(ld, w, args.loopserve_cmd),
        }
        for name in servers:
            if name.startswith("loopserve-w") and name[len("loopserve-w"):].isdigit():
                factories[name] = lambda ld, w, n=int(name[len("loopserve-w"):]): loopserve_server(
                    ld, w, args.loopserve_cmd, n)
        if any(s.startswith("loopserve") for s in servers):  # export the model now, not between two servers' runs
            try:
                loopserve_server(log_dir, work, args.loopserve_cmd)
            except Exception:
                pass  # reported when its turn comes
        for name in servers:
            if name not in factories:
                print(f"unknown server {name!r}; expected one of {sorted(factories)}")
                return 2
            try:
                server = factories[name](log_dir, work)
            except Exception as exc:  # a missing install, a model that will not export
                skipped[name] = f"could not be set up: {exc}"
                print(f"\n[{name}] skipped: {skipped[name]}")
                continue
            print(f"\n[{name}] {shlex.join(server.argv)}", flush=True)
            t0 = time.monotonic()
            server.start()
            try:
                why = server.ready()
                if why is not None:
                    skipped[name] = why
                    print(f"[{name}] skipped: {why}")
                    continue
                print(f"[{name}] ready in {time.monotonic() - t0:.1f} s on port {server.port}", flush=True)
                wrong = check_answer(server, expected)
                if wrong is not None and name != "echo":
                    print(f"[{name}] WARNING: {wrong}")
                if "wrk" in clients:
                    warm_up(server, script)
                for client in clients:
                    if client == "perf_analyzer" and name in ("baseline", "echo"):
                        continue  # needs the config and stats routes the baseline does not have
                    for c in concurrency:
                        if client == "wrk":
                            r = run_wrk(server, c, duration, script)
                        elif client == "perf_analyzer":
                            r = run_perf_analyzer(server, c, duration, work)
                        else:
                            print(f"unknown client {client!r}")
                            return 2
                        results.append(r)
                        print(f"  {client:<14} c={c:<3} req/s {fmt(r.req_s, '.0f'):>7}  p50 {fmt(r.p50_ms, '.3f')} ms  "
                              f"p99 {fmt(r.p99_ms, '.3f')} ms  {r.note}", flush=True)
            finally:
                server.stop()
        ab = None
        if args.ab:
            print("\n[ab] c=1 latency A/B: loopserve and baseline up together", flush=True)
            try:
                ab = run_ab(work, log_dir, args.loopserve_cmd, ab_rounds, script, expected)
            except Exception as exc:  # a model that will not export
                ab = {"skipped": f"could not be set up: {exc}", "rounds": [], "summary": None}
                print(f"[ab] skipped: {ab['skipped']}")
        heavy = None
        if args.heavy:
            print("\n[heavy] heavy MLP: direct batch-64 onnxruntime vs loopserve over HTTP", flush=True)
            try:
                heavy = run_heavy(work, log_dir, args.loopserve_cmd, duration, heavy_rounds)
            except Exception as exc:  # a model that will not export, onnxruntime missing
                heavy = {"skipped": f"could not be set up: {exc}", "rounds": [], "summary": []}
                print(f"[heavy] skipped: {heavy['skipped']}")

    ratio_rows = ratios(results)
    if servers:
        print_table(results)
        print_ratios(ratio_rows, skipped)
    for name, why in skipped.items():
        print(f"skipped {name}: {why.splitlines()[0]}")
    if ab is not None:
        print_ab(ab)
    if heavy is not None:
        print_heavy(heavy)

    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": info,
            "settings": {"duration_s": duration, "concurrency": concurrency, "servers": servers, "clients": clients,
                         "loopserve_cmd": args.loopserve_cmd, "heavy": args.heavy, "heavy_rounds": heavy_rounds,
                         "ab": args.ab, "ab_rounds": ab_rounds},
            "skipped": skipped,
            "results": [asdict(r) for r in results],
            "ratios": ratio_rows,
            "ab": ab,
            "heavy": heavy,
        }, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
