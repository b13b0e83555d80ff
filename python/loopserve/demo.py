"""The demo: build the tiny MLP as an ONNX model directory, serve it through the native
batcher, drive concurrent traffic at it, and print what the batcher did."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np

from loopserve import Model, zoo


async def _drive(model: Model, seconds: float, concurrency: int) -> list[float]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    rng = np.random.default_rng(0)
    x = rng.random((1, 32), dtype=np.float32)

    async def client():
        while time.perf_counter() < stop:
            start = time.perf_counter()
            await model.infer({zoo.INPUT: x})
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies


def run_demo(workdir: str, seconds: float, concurrency: int) -> int:
    repo = Path(workdir) / "models"
    print(f"building the tiny MLP (32 -> 64 -> 2) as ONNX in {repo}/mlp ...")
    zoo.write_model_dir(repo, "mlp", zoo.tiny_mlp(), fmt="onnx", max_batch_size=64, max_queue_delay_us=500,
                        extra_config="threads: 1\n")
    with Model.load(repo / "mlp") as model:
        print(f"serving '{model.name}' version {model.version}; {concurrency} clients for {seconds:.0f} s ...")
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            runner = asyncio.run
        latencies = runner(_drive(model, seconds, concurrency))
        stats = model.stats()
    lat_us = np.array(latencies) * 1e6
    print(f"requests: {stats.success} ok, {stats.failed} failed, {stats.timed_out} timed out, "
          f"{stats.rejected} refused")
    print(f"throughput: {len(latencies) / seconds:,.0f} req/s; latency p50 {np.percentile(lat_us, 50):.0f} us, "
          f"p99 {np.percentile(lat_us, 99):.0f} us")
    print(f"batches: {stats.execution_count}, mean size {stats.inference_count / max(stats.execution_count, 1):.1f}")
    hist = stats.batch_size_histogram
    top = sorted(hist.items(), key=lambda kv: -kv[1])[:8]
    print("most common batch sizes: " + ", ".join(f"{size}x{count}" for size, count in top))
    return 0 if stats.failed == 0 else 1
