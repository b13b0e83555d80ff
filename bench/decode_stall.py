"""How long one large JSON infer body stalls the other clients of its process, with the body
decoded off the event loop (protocol.OFF_LOOP_BYTES, the default) and on it (the limit raised
past the body), side by side in one run on one server (workers 1).

    python bench/decode_stall.py [--mb 40] [--rounds 3]

A keep-alive client sends small infers back to back; the longest gap between its answers while
the large body decodes is the stall. Printed per mode: the median of the rounds' longest gaps,
and the ratio on/off.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgspec
import numpy as np


def longest_gap(port: int, big: bytes, small: bytes) -> float:
    done = threading.Event()
    stamps: list[float] = []

    def small_client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while not done.is_set():
            conn.request("POST", "/v2/models/mlp/infer", small)
            conn.getresponse().read()
            stamps.append(time.perf_counter())
        conn.close()

    thread = threading.Thread(target=small_client)
    thread.start()
    time.sleep(0.3)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    start = time.perf_counter()
    conn.request("POST", "/v2/models/mlp/infer", big)
    conn.getresponse().read()
    end = time.perf_counter()
    done.set()
    thread.join()
    conn.close()
    during = [t for t in stamps if start <= t <= end]
    edges = [start, *during, end]
    return max(b - a for a, b in zip(edges, edges[1:]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=40)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import RunningServer
    from loopserve import zoo
    from loopserve.server import protocol
    from loopserve.server.app import LoopserveApp
    from loopserve.serving.repository import ModelRepository

    rows = int(args.mb * 1e6 / (32 * 12))
    data = np.random.default_rng(0).standard_normal(rows * 32).astype(np.float32).tolist()
    big = msgspec.json.encode({"inputs": [{"name": zoo.INPUT, "shape": [rows, 32], "datatype": "FP32", "data": data}]})
    small = msgspec.json.encode({"inputs": [{"name": zoo.INPUT, "shape": [1, 32], "datatype": "FP32",
                                             "data": [0.1] * 32}]})
    tmp = Path(tempfile.mkdtemp())
    try:
        zoo.write_model_dir(tmp, "mlp", zoo.tiny_mlp(), fmt="onnx")
        repository = ModelRepository(tmp)
        repository.load("mlp")
        server = RunningServer(LoopserveApp(repository), workers=1)
        try:
            results = {"off the loop": [], "on the loop": []}
            default = protocol.OFF_LOOP_BYTES
            for _ in range(args.rounds):  # interleaved, so both modes see the same machine
                for mode, limit in (("off the loop", default), ("on the loop", len(big) + 1)):
                    protocol.OFF_LOOP_BYTES = limit
                    results[mode].append(longest_gap(server.port, big, small))
            protocol.OFF_LOOP_BYTES = default
        finally:
            server.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"body {len(big) / 1e6:.1f} MB of JSON, {args.rounds} rounds; longest gap between a keep-alive "
          f"client's answers while it decodes (median of rounds):")
    med = {mode: statistics.median(gaps) for mode, gaps in results.items()}
    for mode, gaps in results.items():
        print(f"  {mode:13s} {med[mode] * 1e3:8.1f} ms   (rounds: {', '.join(f'{g * 1e3:.0f}' for g in gaps)})")
    print(f"  on/off ratio  {med['on the loop'] / med['off the loop']:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
