"""Hot-swap benchmark: new model versions swapped in under closed-loop load.

The issue's figures: failed requests during 5 swaps under c=64 load (must be 0), p99 in steady
state vs p99 in the 1 s around each swap (target <= 2x), and the memory returned after the old
version unloads.

Model: the tiny MLP (32 -> 64 -> 2) as ONNX, `zoo.tiny_mlp(seed=v)` for version v (so versions
answer differently), written by `zoo.write_model_dir(..., fmt="onnx", max_batch_size=64,
max_queue_delay_us=500, extra_config="threads: 1\\n")`. Every version is exported into a staging
directory before the server starts; a swap moves the next version directory into the served
repository (one rename) and POSTs `/v2/repository/models/mlp/load`, which loads the highest
version, swaps it in and retires the old one once its in-flight requests finish. So the bench
process does no ONNX export (no torch work) while the load runs.

Load: C (default 64) keep-alive HTTP/1.1 connections, each a closed loop of JSON infer POSTs,
written on raw asyncio streams (uvloop when available) in a separate process (this file run with
--client) so it shares no GIL with the bench or the server. Per request it records the send time
(CLOCK_MONOTONIC, shared by all processes), the latency, the HTTP status (0 for a connection
error) and the answer's model_version and OUTPUT0. Its CPU time over the run is reported, so a
client that is the bottleneck shows.

Schedule: 2 s of load, then a swap every --interval s (default 2.0; 5 swaps, --quick 3 with
1.5 s), then one more interval of load.

Reported:
  - total and failed requests (non-200 or connection error; must be 0), answers whose OUTPUT0 is
    not that of the version they name, distinct versions seen, and that every connection's
    versions only go up;
  - p99 in steady state (requests sent outside every swap window and after the first 0.5 s)
    vs p99 in each swap window: from 0.5 s before the load POST was sent to 0.5 s after it
    answered (the POST itself builds and warms the new version off the loop, then swaps);
    target max over swaps <= 2x steady;
  - the server's RSS (VmRSS of its process, sampled every 20 ms) before the first swap, right
    after each load POST answers, and 1 s later (the old version retired and closed), and the
    growth per swap over the run.

    .venv/bin/python bench/hotswap.py [--quick] [--swaps N] [--interval S] [--concurrency C]
                                      [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # noqa: E402  (bench/ is not a package: serving.py sits beside this file)

MODEL = "mlp"
N_IN = 32
HEAVY_N_IN = 512
WARMUP_S = 2.0  # load before the first swap (the first 0.5 s of it is not counted)
EDGE_S = 0.5  # the swap window reaches this far either side of the load POST
SKIP_START_S = 0.5  # connection set-up: not steady state
TARGET_P99_RATIO = 2.0
DEFAULT_CMD = "{python} -m loopserve.cli serve --model-repository {repo} --host 127.0.0.1 --port {port}"


def infer_body(n_in: int = N_IN) -> bytes:
    row = [round(0.01 * (i % 100), 2) for i in range(n_in)]
    return json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, n_in], "datatype": "FP32", "data": row}]},
                      separators=(",", ":")).encode()


# -- the load generator (its own process) ------------------------------------------------------


async def _connection(port: int, request: bytes, records: list, stop: asyncio.Event, ready: list,
                      decode) -> None:
    """One keep-alive connection in a closed loop; reconnects after an error (recorded as status 0)."""
    first = True
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            records.append((time.monotonic(), 0.0, 0, -1, None, None, f"connect: {exc}"))
            await asyncio.sleep(0.01)
            continue
        try:
            while not stop.is_set():
                t0 = time.monotonic()
                writer.write(request)
                status_line = await reader.readline()
                if not status_line:
                    raise ConnectionError("connection closed by the server")
                status = int(status_line.split(b" ", 2)[1])
                head = await reader.readuntil(b"\r\n\r\n")
                length = None
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                        break
                if length is None:
                    raise ConnectionError("answer without Content-Length")
                body = await reader.readexactly(length)
                lat = time.monotonic() - t0
                version, out, err = -1, None, None
                if status == 200:
                    answer = decode(body)
                    version = int(answer["model_version"])
                    out = answer["outputs"][0]["data"]
                else:
                    err = body[:200].decode(errors="replace")
                records.append((t0, lat, status, version, out[0] if out else None, out[1] if out else None, err))
                if first:
                    first = False
                    ready.append(1)
        except (OSError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            records.append((time.monotonic(), 0.0, 0, -1, None, None, f"{type(exc).__name__}: {exc}"))
        finally:
            writer.close()


async def _client_main(port: int, concurrency: int, out_path: str, n_in: int) -> None:
    try:
        import msgspec
        decode = msgspec.json.decode
    except ImportError:
        decode = json.loads
    body = infer_body(n_in)
    request = (f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    conns: list[list] = [[] for _ in range(concurrency)]
    ready: list = []
    cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    tasks = [asyncio.create_task(_connection(port, request, conns[i], stop, ready, decode)) for i in range(concurrency)]
    while len(ready) < concurrency and time.monotonic() - t0 < 30:
        await asyncio.sleep(0.01)
    print("READY", flush=True)
    await stop.wait()
    await asyncio.gather(*tasks, return_exceptions=True)
    cpu1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    Path(out_path).write_text(json.dumps({"wall_s": t1 - t0, "cpu_s": cpu, "connections": conns}))


def client(args) -> int:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_client_main(args.port, args.concurrency, args.out, args.n_in))
    return 0


# -- the server ----------------------------------------------------------------------------------


def vm_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class Server(serving.Server):
    """serving.py's server process, plus the repository load route this bench drives."""

    def __init__(self, argv: list[str], port: int, log_path: Path):
        super().__init__(log_path.stem, argv, port, log_dir=log_path.parent)

    def post(self, path: str, timeout: float = 60.0) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, data=b"", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


class RssSampler(threading.Thread):
    """VmRSS of one process every `period_s`, as (monotonic time, MiB)."""

    def __init__(self, pid: int, period_s: float = 0.02):
        super().__init__(daemon=True)
        self.pid, self.period_s, self.samples, self._halt = pid, period_s, [], threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            rss = vm_rss_mib(self.pid)
            if rss is not None:
                self.samples.append((time.monotonic(), rss))
            self._halt.wait(self.period_s)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def max_between(self, a: float, b: float) -> float | None:
        vals = [r for t, r in self.samples if a <= t <= b]
        return max(vals) if vals else None


# -- analysis ------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s))) - 1))]


def analyse(data: dict, swaps: list[dict], t_start: float, t_end: float, expected: dict[int, list[float]]) -> dict:
    conns = data["connections"]
    flat = [r for c in conns for r in c]
    failed = [r for r in flat if r[2] != 200]
    ok = [r for r in flat if r[2] == 200]
    mixed = 0
    for r in ok:
        exp = expected.get(r[3])
        if exp is None or abs(r[4] - exp[0]) > 1e-4 or abs(r[5] - exp[1]) > 1e-4:
            mixed += 1
    went_back = 0
    for c in conns:
        vs = [r[3] for r in c if r[2] == 200]
        went_back += any(b < a for a, b in zip(vs, vs[1:]))
    windows = [(s["post_start"] - EDGE_S, s["post_end"] + EDGE_S) for s in swaps]
    steady = [r[1] for r in ok if r[0] >= t_start + SKIP_START_S
              and not any(a <= r[0] <= b for a, b in windows)]
    per_swap = []
    for s, (a, b) in zip(swaps, windows):
        lat = [r[1] for r in ok if a <= r[0] <= b]
        n_fail = sum(1 for r in failed if a <= r[0] <= b)
        per_swap.append({"requests": len(lat), "failed": n_fail, "p50_ms": ms(pct(lat, 50)), "p99_ms": ms(pct(lat, 99)),
                         "max_ms": ms(max(lat) if lat else None),
                         "versions": sorted({r[3] for r in ok if a <= r[0] <= b})})
    p99_steady = ms(pct(steady, 99))
    p99_swap_max = max((p["p99_ms"] for p in per_swap if p["p99_ms"] is not None), default=None)
    wall = data["wall_s"]
    errors: dict[str, int] = {}
    for r in failed:
        key = f"HTTP {r[2]}: {r[6]}" if r[2] else str(r[6])
        errors[key[:160]] = errors.get(key[:160], 0) + 1
    return {
        "requests": len(flat), "failed": len(failed), "errors": errors, "wrong_answers": mixed,
        "versions_seen": sorted({r[3] for r in ok}), "connections_that_went_back": went_back,
        "client_req_s": len(flat) / wall if wall else None, "client_cpu_cores": data["cpu_s"] / wall if wall else None,
        "steady": {"requests": len(steady), "p50_ms": ms(pct(steady, 50)), "p99_ms": p99_steady,
                   "max_ms": ms(max(steady) if steady else None)},
        "swaps": per_swap, "p99_swap_max_ms": p99_swap_max,
        "p99_ratio": (p99_swap_max / p99_steady) if p99_swap_max and p99_steady else None,
    }


def ms(s: float | None) -> float | None:
    return None if s is None else s * 1e3


def f(x, spec=".2f") -> str:
    return "-" if x is None else format(x, spec)


# -- the run -------------------------------------------------------------------------------------


def run(args) -> int:
    from runinfo import machine

    import onnxruntime
    import torch

    from loopserve import zoo

    info = machine(torch=torch.__version__, onnxruntime=onnxruntime.__version__)
    info["load_avg_1m_at_start"] = os.getloadavg()[0]
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    n_swaps = args.swaps or (3 if args.quick else 5)
    interval = args.interval or (1.5 if args.quick else 2.0)
    print(f"settings: model {'heavy_mlp' if args.heavy else 'tiny_mlp'}, {n_swaps} swaps every {interval} s under c={args.concurrency} closed-loop load, "
          f"swap window = load POST +-{EDGE_S} s", flush=True)

    work = Path(tempfile.mkdtemp(prefix="bench-hotswap-"))
    try:
        repo, staging = work / "models", work / "staging"
        versions = list(range(1, n_swaps + 2))
        expected = {}
        n_in = HEAVY_N_IN if args.heavy else N_IN
        x = torch.tensor([json.loads(infer_body(n_in))["inputs"][0]["data"]], dtype=torch.float32)
        for v in versions:
            module = (zoo.heavy_mlp if args.heavy else zoo.tiny_mlp)(seed=v)
            zoo.write_model_dir(repo if v == 1 else staging, MODEL, module, fmt="onnx", version=v,
                                max_batch_size=64, max_queue_delay_us=500, extra_config="threads: 1\n")
            with torch.inference_mode():
                expected[v] = module(x).ravel().tolist()
        with socket_port() as port:
            pass
        line = args.loopserve_cmd.format(python=shlex.quote(sys.executable), repo=shlex.quote(str(repo)), port=port)
        server = Server(shlex.split(line), port, work / "server.log")
        server.start()
        client_proc = None
        try:
            why = server.ready()
            if why:
                print(f"server not ready: {why}")
                return 1
            sampler = RssSampler(server.proc.pid)
            sampler.start()
            out_path = work / "client.json"
            client_proc = subprocess.Popen([sys.executable, __file__, "--client", "--port", str(port),
                                            "--concurrency", str(args.concurrency), "--out", str(out_path),
                                            "--n-in", str(n_in)],
                                           stdout=subprocess.PIPE, text=True)
            if client_proc.stdout.readline().strip() != "READY":
                print("client did not start")
                return 1
            t_start = time.monotonic()
            time.sleep(WARMUP_S)
            rss_before = vm_rss_mib(server.proc.pid)
            swaps = []
            next_at = time.monotonic()
            for v in versions[1:]:
                time.sleep(max(0.0, next_at - time.monotonic()))
                os.rename(staging / MODEL / str(v), repo / MODEL / str(v))
                t0 = time.monotonic()
                status, body = server.post(f"/v2/repository/models/{MODEL}/load")
                t1 = time.monotonic()
                rss_after = vm_rss_mib(server.proc.pid)
                time.sleep(1.0)
                rss_1s = vm_rss_mib(server.proc.pid)
                req = urllib.request.Request(f"{server.url}/v2/repository/index", data=b"", method="POST")
                with urllib.request.urlopen(req, timeout=10) as r:
                    ready = sorted(int(e["version"]) for e in json.loads(r.read())
                                   if e["name"] == MODEL and e["state"] == "READY")
                swaps.append({"version": v, "status": status, "body": body[:200].decode(errors="replace"),
                              "post_start": t0, "post_end": t1, "post_ms": (t1 - t0) * 1e3,
                              "rss_after_mib": rss_after, "rss_1s_mib": rss_1s,
                              "rss_peak_mib": sampler.max_between(t0 - EDGE_S, t1 + 1.0), "ready_versions_1s": ready})
                print(f"  swap to v{v}: HTTP {status} in {(t1 - t0) * 1e3:.0f} ms, RSS {f(rss_after, '.1f')} -> "
                      f"{f(rss_1s, '.1f')} MiB after 1 s, READY {ready}", flush=True)
                next_at = t0 + interval
            time.sleep(max(0.0, next_at - time.monotonic()))
            t_end = time.monotonic()
            client_proc.send_signal(signal.SIGTERM)
            client_proc.wait(timeout=30)
            rss_end = vm_rss_mib(server.proc.pid)
            sampler.stop()
            data = json.loads(out_path.read_text())
            unloaded = server.log_path.read_text(errors="replace").count("version unloaded")
        finally:
            if client_proc is not None and client_proc.poll() is None:
                client_proc.kill()
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    res = analyse(data, swaps, t_start, t_end, expected)
    for s in swaps:
        # what the process gave back between its peak around the swap and 1 s after the POST answered
        s["returned_mib"] = (s["rss_peak_mib"] - s["rss_1s_mib"]) if s["rss_peak_mib"] and s["rss_1s_mib"] else None
        s["post_start"] -= t_start
        s["post_end"] -= t_start
    rss_last = swaps[-1]["rss_1s_mib"] if swaps else None
    growth = (rss_last - rss_before) / len(swaps) if swaps and rss_last and rss_before else None
    res["memory"] = {"rss_before_mib": rss_before, "rss_end_mib": rss_end, "growth_per_swap_mib": growth,
                     "version_unloaded_log_lines": unloaded}
    res["load_avg_1m_at_end"] = os.getloadavg()[0]

    print()
    print(f"requests {res['requests']} over {data['wall_s']:.1f} s (client: {f(res['client_req_s'], '.0f')} req/s, "
          f"{f(res['client_cpu_cores'], '.2f')} cores of CPU)")
    print(f"failed   {res['failed']} (must be 0)" + (f": {res['errors']}" if res["errors"] else ""))
    print(f"answers not matching the version they name: {res['wrong_answers']}")
    print(f"versions seen {res['versions_seen']}; connections whose versions went back: "
          f"{res['connections_that_went_back']} of {args.concurrency}")
    print()
    print(f"{'window':<14} {'load POST':>10} {'requests':>9} {'failed':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'RSS after':>10} {'RSS +1 s':>9} {'peak':>7} {'returned':>9}  READY at +1 s")
    st = res["steady"]
    print(f"{'steady':<14} {'':>10} {st['requests']:>9} {'':>6} {f(st['p50_ms']):>8} {f(st['p99_ms']):>8} "
          f"{f(st['max_ms']):>8} {f(rss_before, '.1f'):>10} {'':>9} {'':>7} {'':>9}  (RSS before the first swap)")
    for s, p in zip(swaps, res["swaps"]):
        name = f"swap -> v{s['version']}" + ("" if s["status"] == 200 else f" HTTP {s['status']}")
        print(f"{name:<14} {s['post_ms']:>8.0f}ms {p['requests']:>9} {p['failed']:>6} {f(p['p50_ms']):>8} "
              f"{f(p['p99_ms']):>8} {f(p['max_ms']):>8} {f(s['rss_after_mib'], '.1f'):>10} "
              f"{f(s['rss_1s_mib'], '.1f'):>9} {f(s['rss_peak_mib'], '.1f'):>7} {f(s['returned_mib'], '.1f'):>9}  "
              f"{s['ready_versions_1s']}")
    print()
    ratio = res["p99_ratio"]
    verdict = "-" if ratio is None else ("ok" if ratio <= TARGET_P99_RATIO else "ABOVE TARGET")
    print(f"p99 around swaps (max) / steady p99: {f(res['p99_swap_max_ms'])} / {f(st['p99_ms'])} ms = "
          f"{f(ratio)}x (target <= {TARGET_P99_RATIO}x: {verdict})")
    print(f"RSS: {f(rss_before, '.1f')} MiB before the first swap, {f(rss_last, '.1f')} MiB 1 s after the last: "
          f"{f(growth, '+.2f')} MiB per swap; 'version unloaded' log lines: {unloaded} (of {len(swaps)} swaps)")
    print(f"load average (1 min): {f(info['load_avg_1m_at_start'])} at start, {f(res['load_avg_1m_at_end'])} at end")
    if res["client_cpu_cores"] and res["client_cpu_cores"] > 0.9:
        print("WARNING: the client used most of a core: it may be the bottleneck")

    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": info,
            "settings": {"swaps": n_swaps, "interval_s": interval, "concurrency": args.concurrency,
                         "edge_s": EDGE_S, "heavy": args.heavy, "loopserve_cmd": args.loopserve_cmd},
            "swaps": swaps, "results": res}, indent=2))
        print(f"\nwrote {args.json}")
    failed = res["failed"] or res["wrong_answers"] or res["connections_that_went_back"]
    return 1 if failed else 0


class socket_port:
    """A free loopback port (as a context manager, so the probing socket is closed)."""

    def __enter__(self) -> int:
        import socket
        self._s = socket.socket()
        self._s.bind(("127.0.0.1", 0))
        return self._s.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self._s.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 swaps every 1.5 s")
    ap.add_argument("--swaps", type=int, help="number of swaps (default 5, quick 3)")
    ap.add_argument("--interval", type=float, help="seconds between swaps (default 2.0, quick 1.5)")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--loopserve-cmd", default=os.environ.get("LOOPSERVE_CMD", DEFAULT_CMD))
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--n-in", type=int, default=N_IN, help=argparse.SUPPRESS)
    ap.add_argument("--heavy", action="store_true",
                    help="serve zoo.heavy_mlp(seed=v) (512 -> 2048 -> 2048 -> 2, ~21 MiB of weights) instead of "
                         "the tiny MLP, so that the memory a retired version returns is well above noise")
    args = ap.parse_args()
    return client(args) if args.client else run(args)


if __name__ == "__main__":
    sys.exit(main())
