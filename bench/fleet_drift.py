"""The cost of the fleet view: merging 3 replicas' drift sketches into one window and judging it.

    .venv/bin/python bench/fleet_drift.py [--quick] [--replicas 3] [--features 32] [--rows 10000] [--json PATH]

Three native drift monitors (the replicas) with one reference profile of `--features` numeric
features and 2 outputs each take `--rows` rows into a window and close it; their windows are
serialized as `GET .../drift/sketch` sends them (msgpack). Timed, per fleet window, median of
rounds:

- `merge`: decode the payloads, deserialize the accumulators and merge them (fleet.merge);
- `merge + verdict`: that, then every test of the merged window (what FleetView.drift adds per
  window over reading the replicas);
- `one replica's verdict` (the peer, measured in the same run): judging one replica's own window,
  what a single server already spends on every window of its drift report.

Reported in ms, and `merge + verdict` ÷ the peer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import msgspec
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runinfo import machine  # noqa: E402


def _median_ms(fn, rounds: int) -> float:
    fn()  # warm
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def run(replicas: int = 3, features: int = 32, rows: int = 10_000, rounds: int = 30) -> dict:
    from loopserve.config import DriftConfig, DriftPolicy
    from loopserve.fleet.merge import fleet_drift, merged_windows
    from loopserve.monitor.monitor import DriftMonitor
    from loopserve.monitor.profile import build_profile
    from loopserve.monitor.verdict import window_drift

    rng = np.random.default_rng(0)
    reference = rng.standard_normal((20_000, features)).astype(np.float32)
    profile = build_profile(reference, outputs=rng.random((20_000, 2)).astype(np.float32), output_names=["y0", "y1"])
    config = DriftConfig(window_rows=10**9, window_seconds=0)
    payloads = []
    for _ in range(replicas):
        monitor = DriftMonitor(profile, config, model="m", version="1")
        x = rng.standard_normal((rows, features)).astype(np.float32)
        monitor.offer(x, rng.random((rows, 2)).astype(np.float32))
        monitor.flush()
        monitor.close_window()
        payloads.append(msgspec.msgpack.encode(monitor.sketch()))
        own = monitor.native.windows(False)[-1]
        monitor.stop()
    policy = DriftPolicy()
    decoded = lambda: [msgspec.msgpack.decode(p) for p in payloads]  # noqa: E731
    merge = _median_ms(lambda: merged_windows(decoded(), include_open=False), rounds)
    both = _median_ms(lambda: fleet_drift(decoded(), profile, policy, include_open=False), rounds)
    single = _median_ms(lambda: window_drift(own, profile, policy), rounds)
    return {"replicas": replicas, "features": features, "rows_per_replica": rows,
            "sketch_bytes_per_replica": len(payloads[0]), "merge_ms": round(merge, 3),
            "merge_and_verdict_ms": round(both, 3), "one_replica_verdict_ms": round(single, 3),
            "merge_and_verdict_vs_one_replica": round(both / single, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds")
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--rows", type=int, default=10_000, help="rows per replica's window")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    info = machine()
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    result = run(args.replicas, args.features, args.rows, 5 if args.quick else 30)
    for k, v in result.items():
        print(f"{k:<34} {v}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "result": result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
