"""The batcher on a GPU: served rows/s through the in-process API against the direct limit
(the module called at batch 256 with host->device->host copies), for a heavy MLP
(512->2048->2048->2) and a wide one (1024->4096->4096->1024), instances 1 and 2, c = 256 and
1024 concurrent single-row clients; and the cost of drift monitoring (the kernel path) on vs
off for the wide MLP (both versions loaded, measured in alternating rounds, the median of the
per-round ratios). One table of ratios, all measured in this run; the wide MLP first, since its
figures are the targets. The JSON is rewritten after each measurement, so a run stopped part way
keeps what it measured.

    python bench/gpu_batcher.py [--seconds S] [--rounds R] [--json out.json]
    python bench/gpu_batcher.py --cpu   # tiny shapes on the CPU: checks the script, not the GPU
                                        # (the monitor's kernel path interpreted, TRITON_INTERPRET=1)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time

if "--cpu" in sys.argv:  # the monitor's kernel path interpreted; read when the kernels are first imported
    os.environ["TRITON_INTERPRET"] = "1"

import numpy as np
import torch

from loopserve import DynamicBatching, Model, ModelConfig, TensorConfig
from loopserve.config import DriftConfig
from loopserve.monitor.monitor import DriftMonitor
from loopserve.monitor.profile import build_profile

MODELS = {"wide": (1024, 4096, 4096, 1024), "heavy": (512, 2048, 2048, 2)}
CPU_MODELS = {"wide": (32, 64, 64, 32), "heavy": (16, 32, 32, 2)}
MAX_BATCH = 256


def mlp(sizes) -> torch.nn.Module:
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1]).eval()


def direct_rows_per_s(module, n_in, device, seconds) -> float:
    """The module at batch MAX_BATCH, the batch from pinned host memory and back: the limit."""
    x = torch.randn(MAX_BATCH, n_in).pin_memory() if device != "cpu" else torch.randn(MAX_BATCH, n_in)
    with torch.inference_mode():
        for _ in range(3):  # warm up: lazy init (cuBLAS handles, allocator) is not the limit
            module(x.to(device, non_blocking=True)).cpu()
    rows, start = 0, time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - start < seconds:
            module(x.to(device, non_blocking=True)).cpu()
            rows += MAX_BATCH
    return rows / (time.perf_counter() - start)


async def served_rows_per_s(model: Model, n_in: int, clients: int, seconds: float) -> float:
    """Rows/s over `seconds` of `clients` closed-loop single-row clients, after a warm-up."""
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((1, n_in), dtype=np.float32)} for _ in range(clients)]
    done, running, measuring = 0, True, False

    async def client(feed):
        nonlocal done
        while running:
            await model.infer(feed)
            done += measuring

    tasks = [asyncio.ensure_future(client(f)) for f in feeds]
    await asyncio.sleep(min(1.0, seconds / 2))  # warm up
    measuring, t0 = True, time.perf_counter()
    await asyncio.sleep(seconds)
    rate = done / (time.perf_counter() - t0)
    running = False
    await asyncio.gather(*tasks)
    return rate


def serve(name, sizes, device, instances, monitored=False) -> Model:
    config = ModelConfig(name=name, max_batch_size=MAX_BATCH, device=device, instances=instances,
                         inputs=[TensorConfig("x", "FP32", [sizes[0]])],
                         outputs=[TensorConfig("y", "FP32", [sizes[-1]])],
                         dynamic_batching=DynamicBatching(max_queue_delay_us=200))
    model = Model.from_module(mlp(sizes), config)
    if monitored:
        ref = np.random.default_rng(1).standard_normal((5000, sizes[0]), dtype=np.float32)
        # The kernel path, as on a GPU; interpreted on the CPU, where a short hand-off queue keeps the
        # backlog (skipped past it, and counted) from holding up the end of the run.
        config = DriftConfig(window_seconds=0, **({"queue_rows": 2048} if device == "cpu" else {}))
        model.drift = DriftMonitor.for_model(model, build_profile(ref[:, :22]), config, use_kernels=True)
    return model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="tiny models on the CPU (a check of the script)")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of monitoring on and off")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_batcher: SKIPPED: no CUDA device (use --cpu to check the script)")
        return 0
    device, models = ("cpu", CPU_MODELS) if args.cpu else ("cuda:0", MODELS)
    seconds = 0.5 if args.cpu else args.seconds
    results = {"device": device, "serving": [], "monitoring_rounds": [], "monitoring_on_off": None}

    def save():  # after each measurement: a run stopped part way keeps what it measured
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)

    runner = asyncio.Runner()
    print(f"{'model':<6} {'inst':>4} {'c':>5} {'served rows/s':>14} {'direct rows/s':>14} {'served/direct':>13}")
    for name, sizes in models.items():
        module = mlp(sizes).to(device)
        direct = direct_rows_per_s(module, sizes[0], device, seconds)
        for instances in (1, 2):
            model = serve(name, sizes, device, instances)
            try:
                for clients in (256, 1024):
                    rate = runner.run(served_rows_per_s(model, sizes[0], clients, seconds))
                    results["serving"].append(dict(model=name, instances=instances, clients=clients, served=rate,
                                                   direct=direct))
                    save()
                    print(f"{name:<6} {instances:>4} {clients:>5} {rate:>14,.0f} {direct:>14,.0f} {rate / direct:>13.2f}")
            finally:
                model.close()
        by = {(r["model"], r["instances"], r["clients"]): r["served"] for r in results["serving"]}
        for clients in (256, 1024):
            one = by[(name, 1, clients)]
            print(f"instances 2 / 1, {name}, c={clients}: {by[(name, 2, clients)] / one if one else float('nan'):.2f}"
                  f"   (target >= 1.3 for wide at batch 256)")
        if name == "wide":
            monitoring_on_off(runner, sizes, device, seconds, args.rounds, results, save)
    runner.close()
    return 0


def monitoring_on_off(runner, sizes, device, seconds, rounds, results, save) -> None:
    """Both versions loaded (2 instances each), measured in alternating rounds at c=1024."""
    models = {False: serve("wide", sizes, device, 2), True: serve("wide", sizes, device, 2, monitored=True)}
    try:
        for r in range(rounds):
            order = (False, True) if r % 2 == 0 else (True, False)  # neither always goes first
            rates = {m: runner.run(served_rows_per_s(models[m], sizes[0], 1024, seconds)) for m in order}
            results["monitoring_rounds"].append({"off": rates[False], "on": rates[True]})
            ratios = [x["on"] / x["off"] for x in results["monitoring_rounds"] if x["off"]]
            results["monitoring_on_off"] = statistics.median(ratios) if ratios else None
            save()
            print(f"  round {r + 1}: monitoring off {rates[False]:,.0f} rows/s, on {rates[True]:,.0f} rows/s")
        monitored = models[True]
        if monitored.drift is not None:
            monitored.drift.flush()
            path = "kernels" if monitored.drift.device_path is not None else "native"
            results["monitor_path"] = path
            results["monitor_stats"] = monitored.drift.stats()
            save()
            print(f"drift monitor ({path}): {monitored.drift.stats()}")
    finally:
        for m in models.values():
            m.close()
    on_off = results["monitoring_on_off"]
    print(f"monitoring on / off, wide, instances 2, c=1024, median of {rounds} rounds: "
          f"{on_off if on_off is not None else float('nan'):.3f}   (target >= 0.97)")


if __name__ == "__main__":
    sys.exit(main())
