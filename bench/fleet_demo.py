"""The closed loop's speed as a fleet: `loopserve demo --replicas 3` against the single-server demo,
run alternately in the same session (same sizes, same seed, same machine load).

    .venv/bin/python bench/fleet_demo.py [--rounds 2] [--replicas 3] [--full] [--json PATH]

Each round runs the single-server demo, then the fleet demo (three server processes on their own
ports, one PostgreSQL store, the pipeline on the fleet's merged view), at the demo's quick sizes
(`--full`: the README's run). Per run: seconds from drift onset to the first drifted window the
timeline saw (the fleet's merged window for the fleet), to the promotion of the new version,
and the failed requests. Reported: each run, the medians, and fleet ÷ single per round.
On the fleet, every replica's drift window holds a third of the rows so the merged window is
as large as the single server's: detection should take as long; the rest of the loop (collect,
train, canary, promote on every replica) is what the fleet changes.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runinfo import machine  # noqa: E402


def free_port_run(n: int) -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            for p in range(port, port + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no {n} consecutive free ports")


def one_run(replicas: int, sizes) -> dict:
    from loopserve.demo import run_closed_loop

    with tempfile.TemporaryDirectory(prefix=f"fleet-demo-{replicas}-") as work:
        s = run_closed_loop(work, free_port_run(replicas), sizes, echo=lambda m: None, after_promotion_s=0.0,
                            replicas=replicas)
    onset = s["drift begins (s)"]
    return {"replicas": replicas, "store": s["store"],
            "onset to detected (s)": None if s["drift detected (s)"] is None else round(s["drift detected (s)"] - onset, 1),
            "onset to promoted (s)": s["drift onset to promoted v2 (s)"],
            "promoted version": s.get("production at the end"),
            "failed requests": s["failed requests"], "requests": s["requests"], "seconds": s["seconds"],
            "pipeline runs": s.get("pipeline runs", [])}


def main() -> int:
    from loopserve.demo import QUICK
    from loopserve.demo.setup import DemoSizes

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="the README's demo sizes (default: --quick's)")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    sizes = DemoSizes() if args.full else QUICK

    runs = []
    print(f"{'round':>5} {'replicas':>8} {'store':>10} {'onset->detected s':>18} {'onset->promoted s':>18} "
          f"{'version':>7} {'failed':>6} {'run s':>6}", flush=True)
    for r in range(args.rounds):
        for replicas in (1, args.replicas):
            run = one_run(replicas, sizes) | {"round": r}
            runs.append(run)
            print(f"{r:>5} {replicas:>8} {run['store']:>10} {run['onset to detected (s)']!s:>18} "
                  f"{run['onset to promoted (s)']!s:>18} {run['promoted version']!s:>7} {run['failed requests']:>6} "
                  f"{run['seconds']:>6}", flush=True)
            for outcome in run["pipeline runs"][:-1]:  # the runs before the one that promoted
                print(f"{'':>15} an earlier run: {outcome}", flush=True)

    def median(replicas, key):
        values = [x[key] for x in runs if x["replicas"] == replicas and x[key] is not None]
        return statistics.median(values) if values else None

    ratios = []
    for r in range(args.rounds):
        single, fleet = (next(x for x in runs if x["round"] == r and x["replicas"] == n) for n in (1, args.replicas))
        if single["onset to promoted (s)"] and fleet["onset to promoted (s)"]:
            ratios.append(fleet["onset to promoted (s)"] / single["onset to promoted (s)"])
    summary = {"sizes": "full" if args.full else "quick", "machine": machine(), "runs": runs,
               "median onset->promoted (s)": {"single": median(1, "onset to promoted (s)"),
                                               "fleet": median(args.replicas, "onset to promoted (s)")},
               "median onset->detected (s)": {"single": median(1, "onset to detected (s)"),
                                               "fleet": median(args.replicas, "onset to detected (s)")},
               "fleet / single onset->promoted, per round": [round(x, 2) for x in ratios]}
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
