"""Overload (issue 11, point 3): past saturation, excess requests are refused fast.

For each loopserve server (workers 1, 2 by default; the tiny MLP, wrk with JSON bodies; a name
ending in "-off" is that server with its admission off, http.overload_wait_ms at 10^6, the peer
that shows what the refusals change; "-N" sets http.overload_wait_ms to N; at workers 2 the engine
answers infer itself by default, csrc/http/, and "loopserve-w2-python" is workers 2 without it, the
front ends' Python infer route; "-native" forces the native path on; "triton" is Triton 2.51 from
../shared/anchors/triton, which queues past saturation and refuses nothing, the peer that shows
what a closed loop of 8x the clients does to a C++ server's tail on the same box):
  1. the saturating concurrency: wrk at c = 2, 4, 8, ... 128; the smallest c whose req/s is
     within 10% of the sweep's best;
  2. then, in alternating rounds, wrk at that c and at 8 times it, counting answers by status.

Reported per server (medians over the rounds):
  p99 sat       the p99 at the saturating concurrency (all answers are 200 there)
  p99 200 @8x   the p99 of the requests answered 200 at 8x, bounded from above: wrk keeps one
                histogram for all answers, so this is its percentile at 100 - n/n200 (then at
                most 1% of the 200s are slower, whatever the refusals took)
  ratio         p99 200 @8x / p99 sat (target <= 3)
  refused       share of answers that were 429 or 503; without Retry-After (must be 0)
  max ms        the slowest answer at 8x (target: within the queue timeout,
                dynamic_batching.max_queue_wait_us, 1 s by default); socket errors and timeouts
                (wrk's 5 s) are counted too (must be 0)

    .venv/bin/python bench/overload.py [--servers loopserve-w1,loopserve-w1-off,...] [--rounds 3] [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving as harness  # noqa: E402

# Counts answers by status and refusals without Retry-After, per wrk thread; `done` sums them.
WRK_COUNTING = """\
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0; refused = 0; no_retry = 0; other = 0 end
function response(status, headers, body)
  if status == 200 then ok = ok + 1
  elseif status == 429 or status == 503 then
    refused = refused + 1
    if headers["Retry-After"] == nil and headers["retry-after"] == nil then no_retry = no_retry + 1 end
  else other = other + 1 end
end
done = function(summary, latency, requests)
  local n_ok, n_refused, n_no_retry, n_other = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    n_ok = n_ok + t:get("ok"); n_refused = n_refused + t:get("refused")
    n_no_retry = n_no_retry + t:get("no_retry"); n_other = n_other + t:get("other")
  end
  local n = summary.requests
  local q = 99
  if n_ok > 0 then q = 100 - n / n_ok end
  if q < 0 then q = 0 end
  local e = summary.errors
  io.write(string.format(
    "OVERLOAD_JSON {\\"requests\\": %d, \\"duration_us\\": %d, \\"ok\\": %d, \\"refused\\": %d, " ..
    "\\"no_retry_after\\": %d, \\"other\\": %d, \\"p99_us\\": %d, \\"p99_ok_bound_us\\": %d, \\"max_us\\": %d, " ..
    "\\"socket_errors\\": %d}\\n",
    n, summary.duration, n_ok, n_refused, n_no_retry, n_other, latency:percentile(99),
    latency:percentile(q), latency.max, e.connect + e.read + e.write + e.timeout))
end
"""


def overload_script(work: Path) -> Path:
    path = work / "overload.lua"
    path.write_text(harness.WRK_JSON_REQUEST.replace("%BODY%", harness.infer_body()) + "\n" + WRK_COUNTING)
    return path


def run(server: harness.Server, concurrency: int, seconds: float, script: Path) -> dict | None:
    threads = min(2, concurrency)
    argv = ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{max(1, round(seconds))}s", "--timeout", "5s",
            "-s", str(script), f"{server.url}/v2/models/{harness.MODEL}/infer"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("OVERLOAD_JSON ")), None)
    if proc.returncode != 0 or line is None:
        print(f"[{server.name}] wrk failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
        return None
    out = json.loads(line[len("OVERLOAD_JSON "):])
    out["req_s"] = out["requests"] / (out["duration_us"] / 1e6)
    return out


def saturating_concurrency(server, seconds: float, script: Path) -> tuple[int, dict]:
    sweep = {}
    for c in (2, 4, 8, 16, 32, 64, 128):
        res = run(server, c, seconds, script)
        if res is not None:
            sweep[c] = res["req_s"]
    best = max(sweep.values())
    chosen = min(c for c, r in sweep.items() if r >= 0.9 * best)
    return chosen, sweep


def loopserve_server(name: str, work: Path) -> harness.Server:
    """loopserve-wN[-native|-python][-off|-MS]: N workers, the infer path, the admission budget."""
    workers, _, variant = name[len("loopserve-w"):].partition("-")
    cmd = harness.DEFAULT_LOOPSERVE_CMD
    for path, flag in (("native", " --native-infer"), ("python", " --no-native-infer")):
        if variant.startswith(path):  # loopserve-w2-native|python[-off|-N]: http.native_infer on|off
            cmd += flag
            variant = variant[len(path):].lstrip("-")
    if variant:
        config = work / f"admission-{variant}.yaml"
        config.write_text(f"http:\n  overload_wait_ms: {1000000 if variant == 'off' else float(variant)}\n")
        cmd += f" --config {config}"
    return harness.loopserve_server(work / "logs", work, cmd, int(workers))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="loopserve-w1,loopserve-w2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--saturating", type=int, default=0, help="skip the sweep: this concurrency saturates")
    args = parser.parse_args()
    print(harness.machine())
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        work = Path(tmp)
        (work / "logs").mkdir()
        script = overload_script(work)
        for name in args.servers.split(","):
            server = (harness.triton_server(work / "logs", work) if name == "triton"
                      else loopserve_server(name, work))
            server.start()
            try:
                why = server.ready(120)
                if why is not None:
                    print(f"[{name}] not ready: {why}")
                    return 1
                harness.warm_up(server, harness.wrk_script(work))
                if args.saturating:
                    c_sat, sweep = args.saturating, {}
                else:
                    c_sat, sweep = saturating_concurrency(server, min(args.seconds, 3.0), script)
                print(f"[{name}] req/s by concurrency: " + ", ".join(f"c={c} {r:.0f}" for c, r in sweep.items())
                      + f"; saturating: c={c_sat}", flush=True)
                sat, over = [], []
                for r in range(args.rounds):
                    for c, into in ((c_sat, sat), (8 * c_sat, over)) if r % 2 == 0 else ((8 * c_sat, over), (c_sat, sat)):
                        res = run(server, c, args.seconds, script)
                        if res is not None:
                            into.append(res)
            finally:
                server.stop()
            if not sat or not over:
                continue
            rows.append((name, c_sat, sat, over))
    print(f"\n{'server':<18}{'c sat':>6}{'refused sat':>12}{'req/s sat':>10}{'p99 sat':>9}{'req/s 8x':>9}{'p99 200 @8x':>12}"
          f"{'ratio':>7}{'refused':>9}{'no R-A':>7}{'max ms':>8}{'errors':>7}")
    for name, c_sat, sat, over in rows:
        p99_sat = statistics.median(r["p99_us"] for r in sat) / 1e3
        p99_ok = statistics.median(r["p99_ok_bound_us"] for r in over) / 1e3
        ratios = [o["p99_ok_bound_us"] / s["p99_us"] for s, o in zip(sat, over) if s["p99_us"]]
        refused = sum(r["refused"] for r in over) / max(1, sum(r["requests"] for r in over))
        refused_sat = sum(r["refused"] for r in sat) / max(1, sum(r["requests"] for r in sat))
        print(f"{name:<18}{c_sat:>6}{refused_sat:>12.1%}{statistics.median(r['req_s'] for r in sat):>10.0f}{p99_sat:>9.2f}"
              f"{statistics.median(r['req_s'] for r in over):>9.0f}{p99_ok:>12.2f}"
              f"{statistics.median(ratios):>7.2f}{refused:>9.1%}{sum(r['no_retry_after'] for r in over):>7}"
              f"{max(r['max_us'] for r in over) / 1e3:>8.1f}"
              f"{sum(r['socket_errors'] + r['other'] for r in over):>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
