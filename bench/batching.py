"""Dynamic batching benchmark: what the native batcher costs, as ratios against the same
model called directly in the same run.

Three measurements, each beside its own baseline (the machines are noisy; only ratios
and differences taken side by side mean anything):

1. Heavy MLP (512 -> 2048 -> 2048 -> 2), one compute thread. 64 asyncio clients send
   batch-1 requests in a closed loop through `Model.infer`; the batcher should form
   batches of 64 and keep the model busy, so served rows/s should approach the rows/s of
   calling the model directly at batch 64 (target ratio >= 0.85). Run on torch
   (`Model.from_module`) and on onnxruntime (`Model.load` of an exported model dir), each
   against its own runtime called directly. For torch, several max_queue_delay_us values
   are tried and the best is reported (all are printed). Baseline and served windows
   alternate, and each ratio is the median over rounds.
   Diagnostics, to tell where a shortfall comes from:
   - the batch-size histogram (model.stats()): small batches waste the model's throughput;
   - the worker's share of the window inside batches (gather + model + scatter): the rest
     is bubbles between batches, while the clients and the event loop refill the queue;
   - the model time of a 64-row batch, served vs direct: slower when served means the model
     competes with the event loop (for the GIL, or for a CPU, or for caches);
   - per thread (/proc/self/task/*/schedstat): the worker's (the busiest thread besides the
     event loop's) time on a CPU and runnable but waiting for one. In-batch time that is neither is time blocked, i.e. waiting for the GIL;
   - other processes' CPU use during each window (/proc/stat minus this process): the
     machines are shared, and a busy neighbour slows whichever window it lands in.
2. Tiny MLP (32 -> 64 -> 2) on onnxruntime, where the model costs a few µs and the
   batcher's own per-request cost shows: (a) one client, sequential: median latency of
   `await model.infer` minus median `session.run` at batch 1; (b) 64 clients: wall time
   per request through the batcher minus `session.run` at batch 64 per row.
3. The native core alone (`_core.measure_native`): native threads submit to an echo
   executor, with no Python and no model; µs per request and requests/s.

    .venv/bin/python bench/batching.py [--quick] [--json results.json] [--only heavy|tiny|native]
                                       [--clients N]  (heavy MLP clients; default 64)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import loopserve
from loopserve import DynamicBatching, Model, ModelConfig, TensorConfig, _core, zoo

from runinfo import Usage, UsageMeter, machine

try:
    import uvloop
except ImportError:  # the server uses uvloop; plain asyncio works too
    uvloop = None

CLIENTS = 64
MAX_BATCH = 64


@dataclass
class Settings:
    window_s: float  # one measurement window (baseline or served)
    warmup_s: float  # before each window: clients running, not counted
    rounds: int  # alternating baseline/served windows per configuration
    torch_delays_us: list[int]  # max_queue_delay_us values tried for the torch heavy MLP
    onnx_delay_us: int
    latency_iters: int  # tiny MLP, c=1 sequential requests
    native_requests: int  # per native thread
    native_threads: int = 4
    native_delay_us: int = 100
    heavy_clients: int = CLIENTS


FULL = Settings(window_s=1.5, warmup_s=0.3, rounds=5, torch_delays_us=[500, 2000, 5000], onnx_delay_us=2000,
                latency_iters=20000, native_requests=100_000)
QUICK = Settings(window_s=0.8, warmup_s=0.3, rounds=3, torch_delays_us=[2000], onnx_delay_us=2000,
                 latency_iters=5000, native_requests=25_000)


# -- drivers ------------------------------------------------------------------------------


def direct_rows_per_s(run_batch, rows: int, seconds: float) -> float:
    """Calls `run_batch()` (one batch of `rows` rows) in a loop for `seconds`."""
    for _ in range(3):
        run_batch()
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        run_batch()
        n += 1
        now = time.perf_counter()
        if now >= deadline:
            return n * rows / (now - start)


def direct_call_s(run_batch, iters: int) -> float:
    """Median seconds of one `run_batch()` call."""
    for _ in range(min(iters // 10, 200)):
        run_batch()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter_ns()
        run_batch()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e9


@dataclass
class Window:
    """One closed-loop window through the batcher."""

    requests: int
    seconds: float
    histogram: dict[int, int]  # batch size -> batches run in the window
    busy_ns: int  # worker time in gather + model + scatter during the window
    infer_ns_by_size: dict[int, int]  # batch size -> model time summed over its batches
    usage: Usage

    @property
    def rows_per_s(self) -> float:  # batch-1 requests: one row each
        return self.requests / self.seconds


def _stats_delta(before: loopserve.ModelStats, after: loopserve.ModelStats):
    hist, busy, infer = {}, 0, {}
    for size, s in after.batch_sizes.items():
        b = before.batch_sizes.get(size)
        count = s.count - (b.count if b else 0)
        if count <= 0:
            continue
        hist[size] = count
        infer[size] = s.compute_infer_ns - (b.compute_infer_ns if b else 0)
        busy += (s.compute_input_ns + s.compute_infer_ns + s.compute_output_ns) - (
            (b.compute_input_ns + b.compute_infer_ns + b.compute_output_ns) if b else 0)
    return dict(sorted(hist.items())), busy, infer


async def closed_loop(model: Model, inputs: list[np.ndarray], warmup_s: float, seconds: float) -> Window:
    """len(inputs) clients, each awaiting one request after another; counts the requests
    completed between the end of the warm-up and the end of the window."""
    done = 0
    stop = False

    async def client(x: np.ndarray) -> None:
        nonlocal done
        feed = {zoo.INPUT: x}
        while not stop:
            await model.infer(feed)
            done += 1

    tasks = [asyncio.create_task(client(x)) for x in inputs]
    await asyncio.sleep(warmup_s)
    with UsageMeter() as meter:
        start_done, start_stats, start = done, model.stats(), time.perf_counter()
        await asyncio.sleep(seconds)
        end_done, end_stats, end = done, model.stats(), time.perf_counter()
    stop = True
    await asyncio.gather(*tasks)
    hist, busy, infer = _stats_delta(start_stats, end_stats)
    return Window(end_done - start_done, end - start, hist, busy, infer, meter.usage)


async def sequential_latency_s(model: Model, x: np.ndarray, iters: int) -> float:
    """Median seconds of `await model.infer` from a single client."""
    feed = {zoo.INPUT: x}
    for _ in range(min(iters // 10, 500)):
        await model.infer(feed)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter_ns()
        await model.infer(feed)
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e9


# -- models -------------------------------------------------------------------------------


def torch_config(name: str, n_in: int, n_out: int, delay_us: int) -> ModelConfig:
    return ModelConfig(
        name=name, max_batch_size=MAX_BATCH, instances=1, threads=1,
        inputs=[TensorConfig(zoo.INPUT, "FP32", [n_in])], outputs=[TensorConfig(zoo.OUTPUT, "FP32", [n_out])],
        dynamic_batching=DynamicBatching(max_queue_delay_us=delay_us),
    )


def onnx_model_dir(root: Path, name: str, module: torch.nn.Module, delay_us: int) -> Path:
    return zoo.write_model_dir(root, name, module, fmt="onnx", max_batch_size=MAX_BATCH,
                               max_queue_delay_us=delay_us, extra_config="threads: 1\n")


def ort_session(model_dir: Path) -> ort.InferenceSession:
    """The baseline session, with the threads the served one gets (`threads: 1`)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_dir / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"])


def client_inputs(n_in: int, rng: np.random.Generator, clients: int = CLIENTS) -> list[np.ndarray]:
    """One batch-1 input per client."""
    return [rng.standard_normal((1, n_in), dtype=np.float32) for _ in range(clients)]


# -- 1. heavy MLP throughput ----------------------------------------------------------------


def throughput_rounds(runner: asyncio.Runner, s: Settings, model: Model, run_direct, inputs) -> dict:
    """Alternates direct and served windows. The ratio is the median of the per-round
    ratios; the diagnostics are those of the round whose ratio is that median."""
    rounds = []
    for _ in range(s.rounds):
        with UsageMeter() as meter:
            direct = direct_rows_per_s(run_direct, MAX_BATCH, s.window_s)
        w = runner.run(closed_loop(model, inputs, s.warmup_s, s.window_s))
        full = w.histogram.get(MAX_BATCH, 0)
        rounds.append({
            "direct_rows_per_s": direct,
            "served_rows_per_s": w.rows_per_s,
            "ratio": w.rows_per_s / direct,
            "histogram": w.histogram,
            "busy": w.busy_ns / (w.seconds * 1e9),
            "served_ms_per_full_batch": w.infer_ns_by_size[MAX_BATCH] / full / 1e6 if full else None,
            "direct_ms_per_full_batch": MAX_BATCH / direct * 1e3,
            "others_cores_direct": meter.usage.others_cores,
            "served_usage": asdict(w.usage),
        })
    ratios = [r["ratio"] for r in rounds]
    median = sorted(rounds, key=lambda r: r["ratio"])[(len(rounds) - 1) // 2]  # the lower median: a real round
    hist: dict[int, int] = {}
    for r in rounds:
        for size, count in r["histogram"].items():
            hist[size] = hist.get(size, 0) + count
    return {
        "direct_rows_per_s": statistics.median(r["direct_rows_per_s"] for r in rounds),
        "served_rows_per_s": statistics.median(r["served_rows_per_s"] for r in rounds),
        "ratio": median["ratio"],
        "ratios": ratios,
        "histogram": dict(sorted(hist.items())),
        "mean_batch": sum(k * v for k, v in hist.items()) / max(sum(hist.values()), 1),
        "median_round": median,
        "rounds": rounds,
    }


def bench_heavy_torch(runner: asyncio.Runner, s: Settings, module: torch.nn.Module) -> dict:
    x64 = np.random.default_rng(1).standard_normal((MAX_BATCH, 512), dtype=np.float32)

    def run_direct():
        with torch.inference_mode():
            return module(torch.from_numpy(x64))

    inputs = client_inputs(512, np.random.default_rng(2), s.heavy_clients)
    by_delay = {}
    for delay in s.torch_delays_us:
        with Model.from_module(module, torch_config("heavy_torch", 512, 2, delay)) as model:
            by_delay[delay] = throughput_rounds(runner, s, model, run_direct, inputs)
    best = max(by_delay, key=lambda d: by_delay[d]["ratio"])
    return {"best_delay_us": best, "by_delay_us": by_delay}


def bench_heavy_onnx(runner: asyncio.Runner, s: Settings, module: torch.nn.Module, root: Path) -> dict:
    model_dir = onnx_model_dir(root, "heavy_onnx", module, s.onnx_delay_us)
    session = ort_session(model_dir)
    x64 = np.random.default_rng(1).standard_normal((MAX_BATCH, 512), dtype=np.float32)
    feed = {zoo.INPUT: x64}
    inputs = client_inputs(512, np.random.default_rng(2), s.heavy_clients)
    with Model.load(model_dir) as model:
        result = throughput_rounds(runner, s, model, lambda: session.run(None, feed), inputs)
    return {"delay_us": s.onnx_delay_us, **result}


# -- 2. tiny MLP per-request overhead -------------------------------------------------------


def bench_tiny_overhead(runner: asyncio.Runner, s: Settings, root: Path) -> dict:
    model_dir = onnx_model_dir(root, "tiny_onnx", zoo.tiny_mlp(), 500)
    session = ort_session(model_dir)
    rng = np.random.default_rng(3)
    x1 = rng.standard_normal((1, 32), dtype=np.float32)
    x64 = rng.standard_normal((MAX_BATCH, 32), dtype=np.float32)
    with Model.load(model_dir) as model:
        # (a) one client: alternate direct and served, median of per-round medians.
        direct1, served1 = [], []
        before = model.stats()
        for _ in range(s.rounds):
            direct1.append(direct_call_s(lambda: session.run(None, {zoo.INPUT: x1}), s.latency_iters))
            served1.append(runner.run(sequential_latency_s(model, x1, s.latency_iters)))
        after = model.stats()
        # (b) 64 clients: served wall time per request vs direct batch-64 time per row.
        direct64, served64, hist = [], [], {}
        for _ in range(s.rounds):
            direct64.append(direct_call_s(lambda: session.run(None, {zoo.INPUT: x64}), s.latency_iters // 4) / MAX_BATCH)
            w = runner.run(closed_loop(model, client_inputs(32, rng), s.warmup_s, s.window_s))
            served64.append(w.seconds / w.requests)
            for size, count in w.histogram.items():
                hist[size] = hist.get(size, 0) + count
    us = 1e6
    d1, s1 = statistics.median(direct1) * us, statistics.median(served1) * us
    d64, s64 = statistics.median(direct64) * us, statistics.median(served64) * us
    n1 = after.success - before.success
    return {
        "c1": {"direct_us": d1, "served_us": s1, "overhead_us": s1 - d1,
               # where a lone request's time goes inside the batcher (means, from model.stats())
               "served_queue_us": (after.queue_ns - before.queue_ns) / n1 / 1e3,
               "served_executor_us": (after.compute_infer_ns - before.compute_infer_ns) / n1 / 1e3},
        "c64": {"direct_us_per_row": d64, "served_us_per_request": s64, "overhead_us": s64 - d64,
                "served_requests_per_s": 1e6 / s64, "histogram": dict(sorted(hist.items()))},
    }


# -- 3. native core alone ------------------------------------------------------------------


def bench_native(s: Settings) -> dict:
    config = _core.BatcherConfig()
    config.model_name = "echo"
    config.max_batch_size = MAX_BATCH
    config.max_queue_delay_us = s.native_delay_us
    config.queue_capacity = 4096
    _core.measure_native(config, s.native_threads, 1000, 1)  # warm-up
    runs = [_core.measure_native(config, s.native_threads, s.native_requests, 1) for _ in range(s.rounds)]
    seconds = statistics.median(runs)
    total = s.native_threads * s.native_requests
    return {"threads": s.native_threads, "requests": total, "max_queue_delay_us": s.native_delay_us,
            "us_per_request": seconds / total * 1e6, "requests_per_s": total / seconds}


# -- report --------------------------------------------------------------------------------


def fmt_hist(hist: dict[int, int]) -> str:
    total = sum(hist.values()) or 1
    top = sorted(hist.items(), key=lambda kv: -kv[1])[:6]
    return ", ".join(f"{size}:{count / total:.0%}" for size, count in sorted(top))


DISTURBED_CORES = 0.5


def disturbed(rnd: dict) -> bool:
    """Another process used more than DISTURBED_CORES during either window of the round."""
    return max(rnd["others_cores_direct"], rnd["served_usage"]["others_cores"]) > DISTURBED_CORES


def print_throughput(title: str, r: dict, note: str = "") -> None:
    target = "ok" if r["ratio"] >= 0.85 else "BELOW 0.85"
    m, u = r["median_round"], r["median_round"]["served_usage"]
    print(f"  {title:<34} {r['direct_rows_per_s']:>10.0f} {r['served_rows_per_s']:>10.0f} "
          f"{r['ratio']:>7.3f}  {target}{note}")
    pad = " " * 36
    rounds = " ".join(f"{x['ratio']:.3f}" + ("*" if disturbed(x) else "") for x in r["rounds"])
    print(f"{pad}rounds {rounds}; mean batch {r['mean_batch']:.1f}; "
          f"batch sizes (share of batches): {fmt_hist(r['histogram'])}")
    if m["served_ms_per_full_batch"] is not None:
        print(f"{pad}median round: 64-row batch {m['served_ms_per_full_batch']:.2f} ms served vs "
              f"{m['direct_ms_per_full_batch']:.2f} ms direct; worker in batches {m['busy']:.0%} of the window")
    print(f"{pad}  threads: worker on CPU {u['worker_cpu']:.0%}, runnable but waiting for a CPU "
          f"{u['worker_waiting_for_cpu']:.0%}; event loop on CPU {u['loop_cpu']:.0%}; other processes "
          f"{m['others_cores_direct']:.2f} cores (direct) / {u['others_cores']:.2f} (served)")


def report(results: dict) -> None:
    if "heavy_torch" in results or "heavy_onnx" in results:
        clients = results["settings"]["heavy_clients"]
        print(f"\n1. Heavy MLP 512-2048-2048-2, 1 thread, {clients} clients x batch-1 requests, max_batch_size "
              f"{MAX_BATCH}, instances 1\n")
        print(f"  ratio: median over rounds of served/direct; * marks a round during which other processes "
              f"used > {DISTURBED_CORES} core\n")
        print(f"  {'':<34} {'direct':>10} {'served':>10} {'ratio':>7}")
        print(f"  {'':<34} {'rows/s':>10} {'rows/s':>10}")
    if "heavy_torch" in results:
        t = results["heavy_torch"]
        for delay, r in t["by_delay_us"].items():
            best = " (best)" if delay == t["best_delay_us"] and len(t["by_delay_us"]) > 1 else ""
            print_throughput(f"torch, delay {delay} us", r, best)
    if "heavy_onnx" in results:
        r = results["heavy_onnx"]
        print_throughput(f"onnxruntime, delay {r['delay_us']} us", r)
    if "tiny_overhead" in results:
        t = results["tiny_overhead"]
        c1, c64 = t["c1"], t["c64"]
        print("\n2. Tiny MLP 32-64-2 on onnxruntime (threads 1): batcher overhead per request\n")
        print(f"  {'':<40} {'direct':>9} {'served':>9} {'overhead':>9}")
        print(f"  {'c=1, median latency (us)':<40} {c1['direct_us']:>9.1f} {c1['served_us']:>9.1f} "
              f"{c1['overhead_us']:>9.1f}")
        print(f"  {'':<40} served, mean per request: {c1['served_queue_us']:.1f} us queued, "
              f"{c1['served_executor_us']:.1f} us in the executor (GIL + Python call + session.run)")
        print(f"  {'c=64, wall time per request/row (us)':<40} {c64['direct_us_per_row']:>9.2f} "
              f"{c64['served_us_per_request']:>9.2f} {c64['overhead_us']:>9.2f}")
        print(f"  {'':<40} served {c64['served_requests_per_s']:.0f} req/s; batch sizes: "
              f"{fmt_hist(c64['histogram'])}")
    if "native" in results:
        n = results["native"]
        print(f"\n3. Native core alone (echo executor, {n['threads']} native threads, batch-1 requests, "
              f"max_queue_delay_us {n['max_queue_delay_us']})\n")
        print(f"  {n['us_per_request']:.3f} us per request, {n['requests_per_s']:.0f} requests/s "
              f"({n['requests']} requests)")


# -- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="about 20 s instead of about 1.5 min")
    p.add_argument("--json", type=Path, help="also write the results here as JSON")
    p.add_argument("--clients", type=int, default=CLIENTS, help="heavy MLP: concurrent clients (default 64)")
    p.add_argument("--only", choices=["heavy", "tiny", "native"], action="append",
                   help="run only these sections (repeatable)")
    args = p.parse_args(argv)
    s = dataclasses.replace(QUICK if args.quick else FULL, heavy_clients=args.clients)
    sections = set(args.only or ["heavy", "tiny", "native"])

    torch.set_num_threads(1)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # the exporter's notes about torchvision
    info = machine(torch=torch.__version__, onnxruntime=ort.__version__, numpy=np.__version__,
                   loopserve=loopserve.__version__,
                   event_loop="uvloop " + uvloop.__version__ if uvloop else "asyncio")
    print("loopserve batching benchmark" + (" (--quick)" if args.quick else ""))
    print(f"  {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable); python {info['python']}, "
          f"torch {info['torch']}, onnxruntime {info['onnxruntime']}, numpy {info['numpy']}, {info['event_loop']}")
    print(f"  loopserve {info['loopserve']}, sources {info['source_digest']} (sha256 of csrc/ and python/loopserve/)")
    print(f"  windows {s.window_s} s (+{s.warmup_s} s warm-up), {s.rounds} rounds, direct and served alternating")

    results: dict = {"machine": info, "settings": asdict(s)}
    started = time.perf_counter()
    loop_factory = uvloop.new_event_loop if uvloop else None
    with UsageMeter() as meter, asyncio.Runner(loop_factory=loop_factory) as runner, \
            tempfile.TemporaryDirectory() as tmp:
        if "heavy" in sections:
            module = zoo.heavy_mlp()
            results["heavy_torch"] = bench_heavy_torch(runner, s, module)
            results["heavy_onnx"] = bench_heavy_onnx(runner, s, module, Path(tmp))
        if "tiny" in sections:
            results["tiny_overhead"] = bench_tiny_overhead(runner, s, Path(tmp))
        if "native" in sections:
            results["native"] = bench_native(s)
    results["elapsed_s"] = time.perf_counter() - started
    results["others_cores"] = meter.usage.others_cores

    report(results)
    print(f"\n  ({results['elapsed_s']:.0f} s; other processes used {results['others_cores']:.2f} cores on average"
          + ("; rerun on a quieter machine before trusting these figures)" if results["others_cores"] > DISTURBED_CORES
             else ")"))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"  results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
