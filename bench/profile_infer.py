"""Where a server's CPU goes per infer request, by step: py-spy samples of every process of a
loopserve server under wrk (tiny MLP, JSON, c=64), grouped into the steps of DESIGN.md's
per-request budget. Shares are of the samples of the processes named (the front end's or the
engine's), and µs are those shares of the server's CPU µs per request measured in the same
window (from /proc, all processes).

py-spy is a tool, not a dependency of the project: `.venv/bin/pip install py-spy`.

    .venv/bin/python bench/profile_infer.py [--workers 1] [--seconds 8] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving as harness  # noqa: E402

# A sample counts for the first step (in this order) that any of its frames matches.
STEPS = [
    ("the answer: head and one socket write", ["InferCycle.answer", "RequestResponseCycle.send"]),
    ("decode", ["decode_request", "_raw_input"]),
    ("encode", ["encode_response", "answer_headers"]),
    ("feedback record and request id", ["VersionTrack.record", "new_id", "FeedbackStore.track", "NativeRoutes._record",
                                        "PredictionRecord"]),
    ("hand-off: submit (ring or batcher)", ["EngineChannel.submit", "Model.infer"]),
    ("answers arrive (eventfd, drain, futures)", ["_on_readable", "_LoopChannel.drain", "EngineChannel._flush"]),
    ("batch on the loop (model)", ["_run_deferred", "Backend.__call__"]),
    ("handler (route, scheduling, release, latency)", ["InferEndpoint", "FrontendApp", "scheduling_of", "headers_of",
                                                       "VersionRouter", "LatencyHistogram"]),
    ("connection limits (timers)", ["_arm", "_disarm"]),
    ("fast path bookkeeping", ["fastpath.py", "on_response_complete"]),
    ("HTTP parse", ["data_received", "on_header", "on_url", "on_message_begin"]),
    ("event loop (epoll, reads, callbacks)", ["Runner.run"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        print("py-spy not found: .venv/bin/pip install py-spy")
        return 1
    print(harness.machine())
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        work = Path(tmp)
        (work / "logs").mkdir()
        server = harness.loopserve_server(work / "logs", work, harness.DEFAULT_LOOPSERVE_CMD, args.workers)
        server.start()
        try:
            why = server.ready(120)
            if why is not None:
                print(why)
                return 1
            script = harness.wrk_script(work)
            harness.warm_up(server, script)
            result = {}
            load = threading.Thread(target=lambda: result.update(
                wrk=harness.run_wrk(server, args.concurrency, args.seconds + 2, script)))
            load.start()
            raw = work / "samples.txt"
            subprocess.run([spy, "record", "-r", "500", "-d", str(args.seconds), "-p", str(server.proc.pid),
                            "--subprocesses", "--nonblocking", "-f", "raw", "-o", str(raw)],
                           capture_output=True, timeout=args.seconds + 60)
            load.join()
        finally:
            server.stop()
        wrk = result["wrk"]
        cpu_us = wrk.extra.get("server_cpu_us_per_req")
        print(f"wrk c={args.concurrency}: {wrk.req_s:.0f} req/s, server CPU {cpu_us:.1f} µs/request (all processes)")
        by_process = collections.defaultdict(collections.Counter)
        for line in raw.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            frames = stack.split(";")
            process = "front ends" if "loopserve.server.frontend" in " ".join(frames[:2]) else "engine"
            for step, keys in STEPS:
                if any(k in f for f in frames for k in keys):
                    by_process[process][step] += int(n)
                    break
            else:
                by_process[process]["other"] += int(n)
    total = sum(sum(c.values()) for c in by_process.values())
    for process, counts in sorted(by_process.items()):
        share = sum(counts.values()) / total
        print(f"\n{process}: {share:.0%} of the samples")
        for step in [s for s, _ in STEPS] + ["other"]:
            part = counts[step] / total
            print(f"  {step:<50}{part:>7.1%}{part * cpu_us:>8.1f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
