"""The web UI's cost: time to first chart with a long history, and serving throughput while
the UI polls.

Usage: .venv/bin/python bench/ui.py [--quick] [--rounds R] [--seconds S]

1. Time to first chart: two loopserve servers (own processes) with the demo's kind of data
   (tests/helpers_ui.py), one keeping 10,000 drift windows and 10,000 feedback windows of
   history per version (window_rows 10, window_labels 10, 100,000 rows sent), its peer the
   defaults' 20. Headless Chromium loads /ui/#drift, #accuracy and #models afresh; the figure is
   performance.now() when the page's first chart is drawn (navigation start to pixels: HTML,
   scripts, uPlot, the JSON, the statistics). The drift page's first load on a fresh server is
   reported apart ("cold"): the statistics of its windows are made then, and kept. Target < 1 s.
2. Serving throughput with the UI polling against none: one server, wrk (JSON, c=16) in rounds
   that alternate none / poller / browser; the server keeps the default drift windows (10,000
   rows or 60 s). "poller" replays what the models, drift and accuracy pages fetch, all three
   at once, every 2 s (the drift page reads every 5 s: a worst case; the server's cost alone); "browser" is
   headless Chromium with the drift page open (its rendering shares this machine's cores, so
   that ratio is a floor). The ratio is the median of per-round ratios. Target >= 0.98.
   On a shared 2-core machine those rounds swing with everyone else's load, so the script also
   measures the server process's own CPU with no traffic, idle and with the pages' reads
   replayed: their difference is the share of a core the UI costs the server.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgspec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the demo's kind of data, shared with the UI tests
import serving  # noqa: E402
from helpers_ui import FEATURES, build_store, drive, headless_chromium, server_config  # noqa: E402
from runinfo import cpu_model, source_digest  # noqa: E402

from loopserve.config import DriftConfig, DriftPolicy, FeedbackConfig  # noqa: E402


class Target:
    """A server process, with the request() the data helpers use."""

    def __init__(self, name: str, work: Path, config):
        self.port = serving.free_port()
        config = msgspec.structs.replace(config, http=msgspec.structs.replace(config.http, port=self.port),
                                         log_level="warning")
        path = work / f"{name}.json"
        path.write_bytes(msgspec.json.encode(config))
        self.server = serving.Server(name, [sys.executable, "-m", "loopserve.cli", "serve", "--config", str(path)],
                                     self.port, log_dir=work)
        self.name, self.url = name, f"http://127.0.0.1:{self.port}"

    def start(self):
        self.server.start()
        why = self.server.ready()
        if why:
            raise RuntimeError(f"{self.name}: {why}")
        return self

    def request(self, method, path, body=b"", headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def stop(self):
        self.server.stop()


def first_chart_ms(browser, url: str, page: str) -> float:
    browser.get("about:blank")
    browser.get(f"{url}/ui/?t={time.monotonic_ns()}#{page}")  # a fresh load, not a hash change
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        value = browser.execute_script("return document.body && document.body.dataset.firstChartMs")
        if value:
            return float(value)
        time.sleep(0.01)
    raise RuntimeError(f"{url} #{page}: no chart within 60 s")


def bench_first_chart(work: Path, loads: int, browser) -> list[dict]:
    targets = {}
    for name, history in (("history-10000", 10_000), ("history-20", 20)):
        config = server_config(work / "store", drift=DriftConfig(window_rows=10, window_seconds=0, history=history,
                                                                 queue_rows=1 << 20, policy=DriftPolicy(min_rows=5)),
                               feedback=FeedbackConfig(window_labels=10, history=history, threshold=None))
        targets[name] = Target(name, work, config).start()
    try:
        for t in targets.values():
            failed = drive(t, requests=1000, rows=100, shift_after=500, version=1)
            assert failed == 0, f"{t.name}: {failed} requests failed"
        _, _, body = targets["history-10000"].request("GET", "/v2/models/fraud/feedback?windows=all")
        kept = {v["version"]: len(v["windows"]) for v in json.loads(body)["versions"]}
        _, _, body = targets["history-10000"].request("GET", "/v2/models/fraud/versions/1/drift?windows=1")
        closed = json.loads(body)["monitor"]["windows_closed"]
        print(f"history-10000 holds {closed:,} closed drift windows (v1) and feedback windows per version {kept}")
        rows = []
        for name, t in targets.items():
            cold = first_chart_ms(browser, t.url, "drift")
            rows.append({"server": name, "page": "drift (cold: fresh server)", "ms": [cold]})
            for page in ("drift", "accuracy", "models"):
                rows.append({"server": name, "page": page,
                             "ms": [first_chart_ms(browser, t.url, page) for _ in range(loads)]})
        return rows
    finally:
        for t in targets.values():
            t.stop()


def poll_like_the_pages(url: str, stop: threading.Event, period_s: float = 2.0) -> None:
    base = url.replace("http://", "")
    host, port = base.split(":")
    paths = ["/ui/api/models", "/v2/models/fraud/versions/1/drift?windows=30",
             f"/ui/api/models/fraud/histogram?feature={FEATURES[0]}&version=1", "/v2/models/fraud/feedback?windows=all"]
    while not stop.is_set():
        started = time.monotonic()
        for path in paths:
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.request("GET", path)
            conn.getresponse().read()
            conn.close()
        stop.wait(max(0.0, period_s - (time.monotonic() - started)))


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu_share(target: Target, seconds: float) -> dict:
    """The server's CPU (share of one core) with no traffic: idle, and with the pages' reads
    replayed. Their difference is what the UI costs the server, whatever else the machine runs."""
    pid = target.server.proc.pid
    out = {}
    for mode in ("idle", "poller", "idle", "poller"):
        stop = threading.Event()
        poller = threading.Thread(target=poll_like_the_pages, args=(target.url, stop), daemon=True)
        if mode == "poller":
            poller.start()
        before, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(seconds)
        out.setdefault(mode, []).append((cpu_seconds(pid) - before) / (time.monotonic() - t0))
        stop.set()
        if mode == "poller":
            poller.join()
    return {mode: statistics.mean(v) for mode, v in out.items()}


def bench_polling(work: Path, rounds: int, seconds: float, browser) -> dict:
    config = server_config(work / "store", drift=DriftConfig(), feedback=FeedbackConfig(threshold=None))
    target = Target("polled", work, config).start()
    try:
        drive(target, requests=300, rows=8, shift_after=150)
        script = work / "infer.lua"
        body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, len(FEATURES)], "datatype": "FP32",
                                       "data": [0.1] * len(FEATURES)}]})
        script.write_text(serving.WRK_JSON_REQUEST.replace("%BODY%", body) + "\n" + serving.WRK_DONE)
        wrk_target = target.server
        serving.run_wrk(wrk_target, 16, 1, script, model="fraud")  # warm up (and drift windows to read)
        cpu = server_cpu_share(target, seconds * 3)
        rates: dict[str, list[float]] = {"none": [], "poller": [], "browser": []}
        ratios: dict[str, list[float]] = {"poller": [], "browser": []}
        cpu_per_request: dict[str, list[float]] = {"none": [], "poller": [], "browser": []}
        for i in range(rounds):
            modes = ["none", "poller", "browser"] if i % 2 == 0 else ["browser", "poller", "none"]
            got = {}
            for mode in modes:
                stop = threading.Event()
                poller = None
                if mode == "poller":
                    poller = threading.Thread(target=poll_like_the_pages, args=(target.url, stop), daemon=True)
                    poller.start()
                elif mode == "browser":
                    browser.get(f"{target.url}/ui/?t={time.monotonic_ns()}#drift")
                if mode != "none":
                    time.sleep(1.0)  # the UI open and polling when the round starts
                cpu_before = cpu_seconds(target.server.proc.pid)
                result = serving.run_wrk(wrk_target, 16, seconds, script, model="fraud")
                cpu_used = cpu_seconds(target.server.proc.pid) - cpu_before
                stop.set()
                if poller:
                    poller.join()
                if mode == "browser":
                    browser.get("about:blank")
                if result.note:
                    raise RuntimeError(result.note)
                got[mode] = result.req_s
                rates[mode].append(result.req_s)
                # Server CPU per request moves less than req/s when other work takes the cores.
                cpu_per_request[mode].append(cpu_used / max(1, result.requests))
            for mode in ("poller", "browser"):
                ratios[mode].append(got[mode] / got["none"])
        per_request = {m: statistics.median(v) for m, v in cpu_per_request.items()}
        return {"cpu": cpu, "cpu_per_request_us": {m: 1e6 * v for m, v in per_request.items()}, "rates": {m: statistics.median(v) for m, v in rates.items()},
                "ratios": {m: statistics.median(v) for m, v in ratios.items()}, "all_ratios": ratios}
    finally:
        target.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--loads", type=int, default=5)
    ap.add_argument("--polling-only", action="store_true", help="skip the time to first chart")
    args = ap.parse_args()
    browser = headless_chromium()
    if isinstance(browser, str):
        print(f"skipped: {browser}")
        return 1
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; source {source_digest()}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            build_store(work / "store", work)
            rows = [] if args.polling_only else bench_first_chart(work, 2 if args.quick else args.loads, browser)
            print("\n## time to first chart (ms, median of fresh loads; target < 1000)\n")
            print("| page | history 10,000 | history 20 | ratio |")
            print("| --- | ---: | ---: | ---: |")
            by = {(r["server"], r["page"]): statistics.median(r["ms"]) for r in rows}
            for page in dict.fromkeys(r["page"] for r in rows):
                long, short = by[("history-10000", page)], by[("history-20", page)]
                print(f"| {page} | {long:,.0f} | {short:,.0f} | {long / short:.2f} |")
            res = bench_polling(work, 2 if args.quick else args.rounds, args.seconds, browser)
            print("\n## serving throughput with the UI polling vs none (wrk JSON c=16, alternating rounds)\n")
            cpu = res["cpu"]
            print(f"server CPU, no traffic: idle {cpu['idle']:.3f} of a core, the pages' reads replayed "
                  f"{cpu['poller']:.3f}: the UI costs {cpu['poller'] - cpu['idle']:.3f} of a core "
                  f"(a saturated server would keep about {1 - (cpu['poller'] - cpu['idle']):.3f} of its throughput)")
            print(f"req/s none {res['rates']['none']:,.0f}, poller {res['rates']['poller']:,.0f}, "
                  f"browser {res['rates']['browser']:,.0f}")
            us = res["cpu_per_request_us"]
            print(f"server CPU per request (median of rounds): none {us['none']:.1f} us, poller {us['poller']:.1f} us "
                  f"({us['none'] / us['poller']:.3f}), browser {us['browser']:.1f} us ({us['none'] / us['browser']:.3f})")
            for mode in ("poller", "browser"):
                per_round = ", ".join(f"{r:.3f}" for r in res["all_ratios"][mode])
                print(f"{mode}/none: median {res['ratios'][mode]:.3f} (rounds: {per_round}; target >= 0.98)")
    finally:
        browser.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
