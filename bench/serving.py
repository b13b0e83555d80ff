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

Client and server share the machine's cores, so absolute figures are what this box gives with
a load generator beside the server; compare servers through the ratios, measured in the same run.

    .venv/bin/python bench/serving.py [--quick] [--duration S] [--servers triton,baseline,loopserve]
                                      [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import socket
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


def loopserve_server(log_dir: Path, work: Path, cmd: str) -> Server:
    from loopserve import zoo

    repo = work / "loopserve-models"
    if not (repo / MODEL).exists():
        zoo.write_model_dir(repo, MODEL, zoo.tiny_mlp(), fmt="onnx", max_batch_size=64, max_queue_delay_us=500,
                            extra_config="threads: 1\n")
    port = free_port()
    line = cmd.format(python=shlex.quote(sys.executable), repo=shlex.quote(str(repo)), port=port)
    return Server("loopserve", shlex.split(line), port, log_dir=log_dir)


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


def infer_body() -> str:
    data = [round(0.01 * i, 2) for i in range(N_IN)]
    return json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, N_IN], "datatype": "FP32", "data": data}]})


WRK_LUA = """\
wrk.method = "POST"
wrk.body = [[%BODY%]]
wrk.headers["Content-Type"] = "application/json"

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


def wrk_script(work: Path) -> Path:
    path = work / "infer.lua"
    path.write_text(WRK_LUA.replace("%BODY%", infer_body()))
    return path


def run_wrk(server: Server, concurrency: int, duration_s: float, script: Path) -> Result:
    res = Result(server.name, "wrk", concurrency)
    threads = min(2, concurrency)
    argv = ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{max(1, round(duration_s))}s", "--latency",
            "--timeout", "5s", "-s", str(script), f"{server.url}/v2/models/{MODEL}/infer"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60)
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


def reference_output() -> list[float]:
    import torch

    from loopserve import zoo

    x = torch.tensor([json.loads(infer_body())["inputs"][0]["data"]], dtype=torch.float32)
    with torch.inference_mode():
        return zoo.tiny_mlp()(x).ravel().tolist()


def check_answer(server: Server, expected: list[float]) -> str | None:
    """None if one JSON infer answers the reference MLP's output; otherwise what went wrong."""
    req = urllib.request.Request(f"{server.url}/v2/models/{MODEL}/infer", data=infer_body().encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            got = json.loads(r.read())["outputs"][0]["data"]
    except Exception as exc:
        return f"infer failed: {exc}"
    if len(got) != len(expected) or any(abs(a - b) > 1e-4 for a, b in zip(got, expected)):
        return f"wrong answer: {got} (expected {expected})"
    return None


def warm_up(server: Server, script: Path) -> None:
    """A short burst so that first-request costs (Python backend stub, lazy init) are not measured."""
    subprocess.run(["wrk", "-t", "2", "-c", "16", "-d", "1s", "-s", str(script), f"{server.url}/v2/models/{MODEL}/infer"],
                   capture_output=True, timeout=60)


# -- report -------------------------------------------------------------------------------


def fmt(x: float | None, spec: str) -> str:
    if x is None:
        width = spec.split(".")[0]
        return "-".rjust(int(width) if width.isdigit() else 0)
    return format(x, spec)


def print_table(results: list[Result]) -> None:
    print(f"\n{'server':<10} {'client':<14} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}  note")
    for r in results:
        print(f"{r.server:<10} {r.client:<14} {r.concurrency:>4} {fmt(r.req_s, '9.0f')} {fmt(r.p50_ms, '8.3f')} "
              f"{fmt(r.p99_ms, '8.3f')}  {r.note}")


def ratios(results: list[Result]) -> list[dict]:
    """Each non-Triton server against Triton per (client, concurrency); at c=1, p50 against the baseline (wrk)."""
    by = {(r.server, r.client, r.concurrency): r for r in results if r.req_s}
    out = []
    keys = sorted({(r.client, r.concurrency) for r in results}, key=lambda k: (k[0] != "wrk", k[0], k[1]))
    for server in ("loopserve", "baseline"):
        for client, c in keys:
            me, tri = by.get((server, client, c)), by.get(("triton", client, c))
            if me is None:
                continue
            row = {"server": server, "client": client, "concurrency": c,
                   "req_s_vs_triton": me.req_s / tri.req_s if tri else None,
                   "p99_vs_triton": me.p99_ms / tri.p99_ms if tri and tri.p99_ms else None}
            base = by.get(("baseline", "wrk", 1))
            if server == "loopserve" and client == "wrk" and c == 1 and base and base.p50_ms:
                row["p50_vs_baseline"] = me.p50_ms / base.p50_ms
            out.append(row)
    return out


def print_ratios(rows: list[dict], skipped: dict[str, str]) -> None:
    print(f"\n{'server':<10} {'client':<14} {'conc':>4} {'req/s ÷ Triton':>15} {'p99 ÷ Triton':>13}  (higher req/s, lower p99 is better)")
    for row in rows:
        extra = ""
        if "p50_vs_baseline" in row:
            extra = f"  p50 ÷ baseline p50 = {row['p50_vs_baseline']:.2f} (target <= 1.20)"
        print(f"{row['server']:<10} {row['client']:<14} {row['concurrency']:>4} {fmt(row['req_s_vs_triton'], '15.2f')} "
              f"{fmt(row['p99_vs_triton'], '13.2f')}{extra}")
    if "loopserve" in skipped:
        print("loopserve: skipped, no loopserve ratios in this run")


# -- main ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description="loopserve vs NVIDIA Triton vs a no-batching Starlette baseline")
    parser.add_argument("--quick", action="store_true", help="3 s per measurement, concurrency 1 and 64 only")
    parser.add_argument("--duration", type=float, default=None, help="seconds per measurement (default 10, quick 3)")
    parser.add_argument("--concurrency", default=None, help="comma-separated (default 1,16,64; quick 1,64)")
    parser.add_argument("--servers", default="triton,baseline,loopserve", help="comma-separated subset, in order")
    parser.add_argument("--clients", default="wrk,perf_analyzer", help="comma-separated subset")
    parser.add_argument("--loopserve-cmd", default=os.environ.get("LOOPSERVE_CMD", DEFAULT_LOOPSERVE_CMD),
                        help="format string with {python}, {repo}, {port} (env LOOPSERVE_CMD)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args()

    duration = args.duration if args.duration is not None else (3.0 if args.quick else 10.0)
    concurrency = [int(c) for c in (args.concurrency or ("1,64" if args.quick else "1,16,64")).split(",")]
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    if "wrk" in clients and shutil.which("wrk") is None:
        print("wrk not found (apt-get install wrk); wrk runs skipped")
        clients.remove("wrk")

    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable), "
          f"1-min load avg {info['load_avg_1m_at_start']:.2f} at start, Python {info['python']}")
    print(f"client and server share these {info['cores_usable']} cores (wrk / perf_analyzer run beside the server)")
    print(f"duration {duration:g} s per measurement, concurrency {concurrency}, servers {servers}, clients {clients}")

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
            "loopserve": lambda ld, w: loopserve_server(ld, w, args.loopserve_cmd),
        }
        if "loopserve" in servers:  # export the model now, not between two servers' runs
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
                if wrong is not None:
                    print(f"[{name}] WARNING: {wrong}")
                if "wrk" in clients:
                    warm_up(server, script)
                for client in clients:
                    if client == "perf_analyzer" and name == "baseline":
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

    print_table(results)
    ratio_rows = ratios(results)
    print_ratios(ratio_rows, skipped)
    for name, why in skipped.items():
        print(f"skipped {name}: {why.splitlines()[0]}")

    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": info,
            "settings": {"duration_s": duration, "concurrency": concurrency, "servers": servers, "clients": clients,
                         "loopserve_cmd": args.loopserve_cmd},
            "skipped": skipped,
            "results": [asdict(r) for r in results],
            "ratios": ratio_rows,
        }, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
