"""Issue 12's attacks (points 1-6), each replayed against a live `loopserve serve` for a few
seconds, with what it gives now: the status the attacker got, how long another keep-alive client
stalled (the longest gap between its answers while the attack ran), and the server's memory
(RSS of all its processes) and open file descriptors before and after.

    .venv/bin/python bench/attacks.py [--workers 1] [--only idle,race,...] [--repeat 3] [--json out.json]

The server runs with a management token and shorter limits than the defaults, so that each attack
takes seconds (header_timeout_s 2, body_timeout_s 3, keep_alive_s 2, max_connections 400). Sizes
are reduced where the issue's took long to send: 1,000 idle connections (20,000), 2 MB of slow
headers (400 MB), 100 MB to the index and traffic routes (300 MB), 10 request ids of 4 MiB (40).
The other client alternates a small infer and `GET /v2/models/mlp` (answered by the engine's own
event loop when workers > 1); its gaps include the machine's own noise (tens of ms on a loaded
2-core box): compare a row with the `baseline` row of the same run. With --repeat N each attack
runs N times: the stall printed is the median (and the largest), memory and descriptors are
before the first and after the last.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgspec
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # noqa: E402  (bench/ is not a package)

INPUT = "INPUT0"  # zoo.INPUT, the tiny MLP's input
TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SMALL = msgspec.json.encode({"inputs": [{"name": INPUT, "shape": [1, 32], "datatype": "FP32",
                                         "data": [0.1] * 32}]})


# -- the server's processes -----------------------------------------------------------------

def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[2]) == pgid:
                pids.append(int(entry))
    return pids


def footprint(pgid: int) -> tuple[int, int]:
    """(RSS bytes, open descriptors) summed over the server's processes."""
    rss = fds = 0
    for pid in group_pids(pgid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
            fds += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return rss, fds


# -- the other client -----------------------------------------------------------------------

_OBSERVER = r"""
import http.client, json, sys, threading, time
port, small = int(sys.argv[1]), sys.argv[2].encode()
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
stamps, statuses, conn, n = [], {}, None, 0
while not done.is_set():
    try:
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        if n % 2:
            conn.request("GET", "/v2/models/mlp")
        else:
            conn.request("POST", "/v2/models/mlp/infer", small)
        response = conn.getresponse()
        response.read()
        statuses[response.status] = statuses.get(response.status, 0) + 1
    except (OSError, http.client.HTTPException):
        statuses[0] = statuses.get(0, 0) + 1  # refused or closed: no answer, the gap goes on
        conn = None
        time.sleep(0.01)
        continue
    stamps.append(time.monotonic())
    n += 1
    if n == 3:
        print("ready", flush=True)
print(json.dumps({"stamps": stamps, "statuses": statuses}), flush=True)
"""


class Observer:
    """The other client: a keep-alive connection asking all the time, in its own process (so that
    neither the attacker's threads nor its payloads share its GIL); the longest gap between its
    answers while the attack ran (time.monotonic is one clock for every process)."""

    def __init__(self, port: int):
        self.port = port

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", _OBSERVER, str(self.port), SMALL.decode()],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.end = time.monotonic()
        out, _ = self.proc.communicate("", timeout=120)
        result = json.loads(out.splitlines()[-1])
        self.stamps, self.statuses = result["stamps"], result["statuses"]

    def longest_gap(self) -> float:
        inside = [t for t in self.stamps if self.start <= t <= self.end]
        edges = [self.start, *inside, self.end]
        return max(b - a for a, b in zip(edges, edges[1:]))


# -- raw HTTP --------------------------------------------------------------------------------

def status_of(sock: socket.socket, timeout: float = 30) -> str:
    """The status line's code the server sent before closing (or 'closed'/'open')."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        return "open"
    except ConnectionResetError:
        return "reset"
    if not data.startswith(b"HTTP/1.1 "):
        return "closed"
    return data.split()[1].decode()


def post(port: int, path: str, body: bytes, headers: dict | None = None, timeout: float = 300) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body, headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def send_oversized(port: int, path: str, declared: int, headers: str = "") -> str:
    """Declares and streams `declared` bytes in 1 MiB writes until the server answers or closes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {declared}\r\n\r\n".encode())
        chunk = b" " * (1 << 20)
        sent = 0
        try:
            while sent < declared and not select.select([sock], [], [], 0)[0]:  # until the server answers
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return f"{status_of(sock)} after {sent >> 20} MiB sent"
    finally:
        sock.close()


def count(statuses: list[str]) -> str:
    tally: dict[str, int] = {}
    for s in statuses:
        tally[s] = tally.get(s, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(tally.items()))


# -- the attacks -----------------------------------------------------------------------------

def baseline(port: int) -> str:
    time.sleep(2)
    return "-"


def idle_connections(port: int, n: int = 1000) -> str:
    """1: idle connections past max_connections, then held until the header timeout."""
    socks = []
    for _ in range(n):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        except OSError:
            break
    statuses = [status_of(s, timeout=15) for s in socks]
    for s in socks:
        s.close()
    return count(statuses)


def endless_head(port: int, total: int = 2 << 20) -> str:
    """1: a head that never ends, sent in 8 KiB pieces."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\n")
        sent = 0
        try:
            while sent < total:
                sock.sendall(b"X-Pad: " + b"a" * 8000 + b"\r\n")
                sent += 8009
                time.sleep(0.002)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return f"{status_of(sock)} after {sent >> 10} KiB"
    finally:
        sock.close()


def short_body(port: int, n: int = 20) -> str:
    """1: bodies that declare 1 MB and send 1 KB, on 20 connections."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b" " * 1000)
        socks.append(s)
    start = time.perf_counter()
    statuses = [status_of(s) for s in socks]
    held = time.perf_counter() - start
    for s in socks:
        s.close()
    return f"{count(statuses)} (held {held:.1f} s)"


def load_unload_race(port: int, seconds: float = 3.0, threads: int = 30) -> str:
    """2: load and unload one model from 30 threads, then check READY means servable."""
    stop = time.perf_counter() + seconds
    statuses: list[int] = []

    def churn(i):
        while time.perf_counter() < stop:
            action = "load" if i % 2 else "unload"
            try:
                statuses.append(post(port, f"/v2/repository/models/mlp/{action}", b"", AUTH, timeout=60)[0])
            except OSError:
                statuses.append(0)

    workers = [threading.Thread(target=churn, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    _, raw = post(port, "/v2/repository/index", b"")
    ready = any(m["name"] == "mlp" and m["state"] == "READY" for m in json.loads(raw))
    infer = post(port, "/v2/models/mlp/infer", SMALL)[0]
    consistent = ready == (infer == 200)
    reload = post(port, "/v2/repository/models/mlp/load", b"", AUTH)[0]
    after = post(port, "/v2/models/mlp/infer", SMALL)[0]
    return (f"{len(statuses)} calls ({count([str(s) for s in statuses])}); then READY={ready}, infer {infer} "
            f"({'consistent' if consistent else 'INCONSISTENT'}); load {reload}, infer {after}")


def feedback_without_token(port: int) -> str:
    """3: labels without the token; the ids the server makes."""
    status, _ = post(port, "/v2/models/mlp/feedback", b'{"id": "x", "label": 1}')
    ids = [json.loads(post(port, "/v2/models/mlp/infer", SMALL)[1])["id"] for _ in range(2)]
    common = len(os.path.commonprefix(ids))
    return f"{status} without token; made ids {ids[0][:6]}.., {ids[1][:6]}.. ({len(ids[0]) * 4} bits, {common} chars shared)"


def index_body(port: int) -> str:
    """4: 100 MB to the repository index (no token needed)."""
    return send_oversized(port, "/v2/repository/index", 100 << 20)


def traffic_body(port: int) -> str:
    """4: 100 MB to the traffic route, without the token (and with it)."""
    without = send_oversized(port, "/v2/models/mlp/traffic", 100 << 20)
    with_token = send_oversized(port, "/v2/models/mlp/traffic", 100 << 20, f"Authorization: Bearer {TOKEN}\r\n")
    return f"{without}; with token {with_token}"


def long_request_ids(port: int, body: bytes, n: int = 10) -> str:
    """5: request ids of 4 MiB."""
    return count([str(post(port, "/v2/models/mlp/infer", body)[0]) for _ in range(n)])


def long_id_body() -> bytes:
    return msgspec.json.encode({"id": "i" * (4 << 20), "inputs": [
        {"name": INPUT, "shape": [1, 32], "datatype": "FP32", "data": [0.1] * 32}]})


def bytes_body(mb: int = 16) -> tuple[bytes, dict]:
    items = [b"x" * 60] * (mb * 1_000_000 // 64)
    raw = b"".join(struct.pack("<I", len(x)) + x for x in items)
    header = msgspec.json.encode({"inputs": [{"name": INPUT, "shape": [len(items)], "datatype": "BYTES",
                                              "parameters": {"binary_data_size": len(raw)}}]})
    return header + raw, {"Inference-Header-Content-Length": str(len(header)),
                          "Content-Type": "application/octet-stream"}


def json_body(mb: float) -> bytes:
    """A JSON infer body of about `mb` MB: more rows than the model's max batch (decoded, then refused)."""
    values = np.random.default_rng(0).standard_normal(10_000).astype(np.float32).tolist()
    per_value = len(msgspec.json.encode(values)) / len(values)
    rows = int(mb * 1e6 / per_value / 32)
    data = (values * (rows * 32 // len(values) + 1))[:rows * 32]
    return msgspec.json.encode({"inputs": [{"name": INPUT, "shape": [rows, 32], "datatype": "FP32", "data": data}]})


def feedback_body(labels: int) -> bytes:
    return msgspec.json.encode({"labels": [{"id": f"unknown-{i:07d}-xxxxxxxxxxxxxx", "label": i % 2}
                                           for i in range(labels)]})


def send_body(port: int, body: bytes, path: str = "/v2/models/mlp/infer", headers: dict | None = None) -> str:
    """6: one large body; the answer's status and the start of its message."""
    status, answer = post(port, path, body, headers)
    try:
        decoded = json.loads(answer)
        detail = decoded.get("error") or ", ".join(f"{k} {decoded[k]}" for k in ("joined", "unknown") if k in decoded)
    except ValueError:
        detail = answer[:40]
    return f"{status} ({len(body) / 1e6:.0f} MB): {detail[:60]}"


# key: (what, attack(port, *payload), payload made before the attack's window, or None)
ATTACKS = {
    "baseline": ("nothing (2 s)", baseline, None),
    "idle": ("1: 1,000 idle connections", idle_connections, None),
    "head": ("1: endless head, 2 MB slowly", endless_head, None),
    "body": ("1: 20 bodies short of their length", short_body, None),
    "race": ("2: load/unload from 30 threads, 3 s", load_unload_race, None),
    "feedback-auth": ("3: feedback without token; made ids", feedback_without_token, None),
    "index": ("4: 100 MB to the repository index", index_body, None),
    "traffic": ("4: 100 MB to the traffic route", traffic_body, None),
    "ids": ("5: 10 request ids of 4 MiB", long_request_ids, lambda: (long_id_body(),)),
    "bytes": ("6: 16 MB BYTES to an FP32 input", send_body, lambda: (bytes_body()[0], "/v2/models/mlp/infer",
                                                                   bytes_body()[1])),
    "json51": ("6: 51 MB JSON infer", send_body, lambda: (json_body(51),)),
    "json64": ("6: 64 MB JSON infer (the limit: 67 MB)", send_body, lambda: (json_body(66),)),
    "feedback19": ("6: 19 MB feedback", send_body, lambda: (feedback_body(380_000), "/v2/models/mlp/feedback", AUTH)),
    "feedback64": ("6: 64 MB feedback (1.3M labels)", send_body,
                   lambda: (feedback_body(1_300_000), "/v2/models/mlp/feedback", AUTH)),
}


def settle(pgid: int, before_fds: int, seconds: float = 8.0, at_least: float = 2.0) -> tuple[int, int]:
    """The footprint once descriptors are back near where they were (or after `seconds`), and
    no sooner than `at_least` (the server trims its heap a second after a large body:
    loopserve/server/heap.py)."""
    start = time.monotonic()
    deadline = start + seconds
    while True:
        rss, fds = footprint(pgid)
        if (fds <= before_fds + 2 and time.monotonic() - start >= at_least) or time.monotonic() > deadline:
            return rss, fds
        time.sleep(0.2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--only", help="comma-separated attack keys: " + ",".join(ATTACKS))
    ap.add_argument("--repeat", type=int, default=1, help="runs of each attack (median stall reported)")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    chosen = [k for k in ATTACKS if not args.only or k in args.only.split(",")]

    from loopserve import zoo

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        zoo.write_model_dir(work / "models", "mlp", zoo.tiny_mlp(), fmt="onnx", max_batch_size=64)
        port = serving.free_port()
        config = work / "server.yaml"
        config.write_text(f"model_repository: {work / 'models'}\nmanagement_token: {TOKEN}\nworkers: {args.workers}\n"
                          f"log_level: warning\nrepository_poll_s: 0\nhttp: {{host: 127.0.0.1, port: {port}, "
                          "header_timeout_s: 2, body_timeout_s: 3, keep_alive_s: 2, max_connections: 400}\n")
        argv = [sys.executable, "-m", "loopserve.cli", "serve", "--config", str(config)]
        server = serving.Server("attacks", argv, port, log_dir=work)
        server.start()
        rows = []
        try:
            problem = server.ready()
            if problem:
                raise RuntimeError(problem)
            pgid = server.proc.pid
            for _ in range(50):  # warm: the first requests load what they need
                post(port, "/v2/models/mlp/infer", SMALL)
            print(f"loopserve serve, workers {args.workers}; limits: header 2 s, body 3 s, keep-alive 2 s, "
                  f"400 connections per process")
            print(f"{'attack':<40} {'stall ms':>11} {'RSS MB before':>14} {'after':>6} {'fds before':>11} "
                  f"{'after':>6}  attacker got")
            for key in chosen:
                label, attack, prepare = ATTACKS[key]
                payload = prepare() if prepare else ()
                rss0, fds0 = footprint(pgid)
                stalls, outcomes = [], []
                for _ in range(args.repeat):
                    with Observer(port) as observer:
                        try:
                            outcomes.append(attack(port, *payload))
                        except Exception as exc:  # noqa: BLE001  (a bench reports, it does not stop)
                            outcomes.append(f"bench error: {exc!r}"[:120])
                    stalls.append(observer.longest_gap() * 1e3)
                rss1, fds1 = settle(pgid, fds0)
                outcome = outcomes[-1] if len(set(outcomes)) == 1 else " | ".join(outcomes)
                row = {"attack": label, "key": key, "outcome": outcome, "stall_ms": round(statistics.median(stalls)),
                       "stall_ms_max": round(max(stalls)), "stalls_ms": [round(x) for x in stalls],
                       "rss_before_mb": round(rss0 / 1e6), "rss_after_mb": round(rss1 / 1e6), "fds_before": fds0,
                       "fds_after": fds1, "observer": observer.statuses, "alive": server.proc.poll() is None}
                rows.append(row)
                stall = f"{row['stall_ms']}" + (f" ({row['stall_ms_max']})" if args.repeat > 1 else "")
                print(f"{label:<40} {stall:>11} {row['rss_before_mb']:>14} {row['rss_after_mb']:>6} "
                      f"{fds0:>11} {fds1:>6}  {outcome}", flush=True)
                del payload
                if not row["alive"]:
                    print("the server died:\n" + server.log_tail())
                    break
        finally:
            server.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
