"""Drift kernels on a GPU: throughput of the Triton accumulators against the device's memory
bandwidth and against a torch-native path, measured in the same run.

The case (issue 5): a float32 batch of 200,000 rows x 22 columns, 20 numeric features with 10
bins (9 quantile edges) and 1% NaN, and 2 categorical columns, one with 1,000 categories (1,200
codes, skewed, the rest pooled into "other"), one with 10. One update = bin counts + missing
counts + moments of the 20 numeric features + category counts of the 2 categorical ones.

Measured, each as the median of several windows (CUDA events):
- `copy`: a 1 GiB `dst.copy_(src)`; bandwidth = (read + write) / time: the achievable memory
  bandwidth, the denominator of the target (kernel >= 50% of it);
- `kernel`: `drift_update_` (one pass over x + a tiny moments merge), launched from Python
  (`eager`, includes Triton's launch overhead) and replayed from a CUDA graph (`graph`, GPU time);
  parts alone (bins, moments, categories with `tl.histogram` or with atomics) for diagnosis;
- `torch`: the same update in torch: `torch.bucketize` per feature + one `bincount`, masked
  mean/m2/min/max, table lookup + `bincount` (the "torch-native path"); and the batched
  `searchsorted` reference (`loopserve.kernels.bin_counts_reference` etc.).
GB/s counts the bytes of x once (rows x 22 x 4). Several copies of x (more than 3x the L2 cache
together) are cycled so that every update reads x from memory, not from L2. Before timing, the
kernel's counts are checked to equal the torch reference exactly (moments to 1e-9).

Without a CUDA device it says so, runs a tiny interpreted smoke check (TRITON_INTERPRET=1) of
the same update against the reference, and exits 0. `--cpu` runs the whole benchmark instead on
the CPU, interpreted, at a tiny size (wall-clock timing, no CUDA graphs): a check of the script
and of its JSON, not a figure (bench/gpu_session.py's dry run uses it).

    .venv/bin/python bench/drift_gpu.py [--quick] [--json results.json] [--rows N ...]
        [--no-sweep | --sweep-only] [--no-compile-report] [--cpu]

The JSON is rewritten after each batch size, so a run stopped part way keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from runinfo import machine

NUMERIC, BINS, CATS = 20, 10, ((1200, 1000), (10, 10))  # (codes L, slots K) per categorical column


def build_case(rows: int, device, seed: int = 0) -> dict:
    """The batch and every accumulator tensor, on `device`."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, NUMERIC + len(CATS), generator=g) * torch.linspace(0.5, 3.0, NUMERIC + len(CATS))
    x[:, :NUMERIC][torch.rand(rows, NUMERIC, generator=g) < 0.01] = float("nan")
    ref = torch.randn(50_000, NUMERIC, generator=g, dtype=torch.float64) * 1.1 + 0.05
    edges = torch.quantile(ref, torch.arange(1, BINS, dtype=torch.float64) / BINS, dim=0).T.contiguous()
    luts = torch.zeros(len(CATS), max(L for L, _ in CATS), dtype=torch.int32)
    for j, (L, K) in enumerate(CATS):
        x[:, NUMERIC + j] = torch.floor(L * 1.05 * torch.rand(rows, generator=g) ** 3)  # skewed; some >= L
        luts[j, :L] = torch.where(torch.arange(L) < K, torch.arange(L), K).to(torch.int32)
    k_max = max(K for _, K in CATS)
    st = dict(
        numeric_cols=torch.arange(NUMERIC, dtype=torch.int32), edges=edges,
        n_edges=torch.full((NUMERIC,), BINS - 1, dtype=torch.int32),
        counts=torch.zeros(NUMERIC, BINS, dtype=torch.int64), missing=torch.zeros(NUMERIC, dtype=torch.int64),
        sums=torch.zeros(NUMERIC, BINS, dtype=torch.float64),  # per-bin value sums, as the monitor keeps them
        cat_cols=torch.arange(NUMERIC, NUMERIC + len(CATS), dtype=torch.int32), luts=luts,
        lut_sizes=torch.tensor([L for L, _ in CATS], dtype=torch.int32),
        n_other=torch.tensor([K for _, K in CATS], dtype=torch.int32),
        cat_counts=torch.zeros(len(CATS), k_max + 1, dtype=torch.int64),
        cat_missing=torch.zeros(len(CATS), dtype=torch.int64),
    )
    st = {k: v.to(device) for k, v in st.items()}
    return {"x": x.to(device), "state": st}


def kernel_update(x, st, drift, edges_f32, parts=("bins", "moments", "cats"), cat_mode="auto"):
    kw = dict(check=False, cat_mode=cat_mode)
    if "bins" in parts:
        kw.update(edges=st["edges"], n_edges=st["n_edges"], counts=st["counts"], missing=st["missing"],
                  sums=st["sums"], edges_f32=edges_f32)
    if "cats" in parts:
        kw.update({k: st[k] for k in ("cat_cols", "luts", "lut_sizes", "n_other", "cat_counts", "cat_missing")})
    return drift.drift_update_(x, numeric_cols=st["numeric_cols"], with_moments="moments" in parts, **kw)


def torch_native_update(x, st):
    """bucketize per feature + one bincount; masked moments; lookup + bincount per categorical."""
    F, E = st["edges"].shape
    v = x[:, :F].to(torch.float64)
    fin = torch.isfinite(v)
    vt = v.T.contiguous()  # one contiguous row per feature for bucketize
    bins = torch.stack([torch.bucketize(vt[f], st["edges"][f], right=True) for f in range(F)], dim=1)
    flat = torch.where(fin, bins + torch.arange(F, device=x.device) * (E + 1), F * (E + 1))
    st["counts"] += torch.bincount(flat.reshape(-1), minlength=F * (E + 1) + 1)[:-1].reshape(F, E + 1)
    st["missing"] += (~fin).sum(0)
    n = fin.sum(0)
    mean = torch.where(fin, v, 0.0).sum(0) / n.clamp(min=1)
    m2 = torch.where(fin, v - mean, 0.0).square().sum(0)
    mom = (n, mean, m2, torch.where(fin, v, math.inf).amin(0), torch.where(fin, v, -math.inf).amax(0))
    for j, (L, K) in enumerate(CATS):
        code = x[:, F + j].to(torch.float64)
        ok = torch.isfinite(code) & (code > -1)
        idx = torch.where(ok, code, 0.0).clamp(max=L).to(torch.int64)
        slot = torch.where(idx < L, st["luts"][j].long()[idx.clamp(max=L - 1)], K)
        st["cat_counts"][j, : K + 1] += torch.bincount(slot[ok], minlength=K + 1)
        st["cat_missing"][j] += (~ok).sum()
    return mom


def torch_reference_update(x, st, kernels):
    c, m = kernels.bin_counts_reference(x, st["numeric_cols"], st["edges"], st["n_edges"])
    st["counts"] += c
    st["missing"] += m
    mom = kernels.moments_reference(x, st["numeric_cols"])
    for j, (L, K) in enumerate(CATS):
        cc, cm = kernels.category_counts_reference(x, NUMERIC + j, st["luts"][j, :L], K)
        st["cat_counts"][j, : K + 1] += cc
        st["cat_missing"][j] += cm[0]
    return mom


def check(case, drift, kernels, edges_f32) -> list[str]:
    """The kernel's update equals the torch reference's: counts exactly, moments to 1e-9."""
    x, st = case["x"], case["state"]
    a = {k: (v.clone().zero_() if v.dtype == torch.int64 else v) for k, v in st.items()}
    b = {k: (v.clone().zero_() if v.dtype == torch.int64 else v) for k, v in st.items()}
    mk = kernel_update(x, a, drift, edges_f32)
    mr = torch_reference_update(x, b, kernels)
    mt = torch_native_update(x, {k: (v.clone().zero_() if v.dtype == torch.int64 else v) for k, v in st.items()})
    bad = [k for k in ("counts", "missing", "cat_counts", "cat_missing") if not torch.equal(a[k], b[k])]
    for name, want in (("reference", mr), ("torch-native", mt)):
        for i, label in enumerate(("count", "mean", "m2", "min", "max")):
            if i in (0, 3, 4):
                ok = torch.equal(mk[i], want[i])
            else:
                ok = torch.allclose(mk[i], want[i], rtol=1e-9, atol=0)
            if not ok:
                bad.append(f"moments {label} vs {name}")
    return bad


def time_windows(run, windows: int, cuda: bool = True) -> float:
    """Median over windows of the seconds one `run()` takes (CUDA events; wall clock on the CPU)."""
    run()
    if not cuda:
        times = []
        for _ in range(windows):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    torch.cuda.synchronize()
    times = []
    for _ in range(windows):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def per_update(fn, xs, windows: int, graph: bool) -> float:
    """Seconds per update, cycling through the copies of x; from Python or from a CUDA graph."""
    cuda = xs[0].is_cuda
    if graph and not cuda:
        raise RuntimeError("CUDA graphs need a CUDA device")
    if not graph:
        return time_windows(lambda: [fn(x) for x in xs], windows, cuda) / len(xs)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for x in xs:  # warm up (and compile) outside the capture
            fn(x)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for x in xs:
            fn(x)
    return time_windows(g.replay, windows) / len(xs)


def copy_bandwidth(windows: int, device: str = "cuda") -> float:
    n = 1 << 28 if device == "cuda" else 1 << 24  # 1 GiB of float32 (64 MiB on the CPU)
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = time_windows(lambda: dst.copy_(src), windows, device == "cuda")
    del src, dst
    if device == "cuda":
        torch.cuda.empty_cache()
    return 2 * n * 4 / t


def smoke() -> int:
    """No GPU: the same update, tiny, in Triton's interpreter, against the reference."""
    os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels module is first imported (below)
    try:
        import triton  # noqa: F401
    except ImportError:
        print("  smoke check skipped: triton is not installed")
        return 0
    try:
        from loopserve import kernels
        from loopserve.kernels import drift
    except Exception as e:  # e.g. the native core does not build right now
        print(f"  smoke check could not run: importing loopserve failed: {type(e).__name__}: {e}"[:300])
        return 0

    case = build_case(257, "cpu")
    ef = drift._edges_f32(case["state"]["edges"])
    bad = check(case, drift, kernels, ef)
    print(f"  interpreted smoke check (257 rows, TRITON_INTERPRET=1): {'ok' if not bad else 'MISMATCH ' + ', '.join(bad)}")
    return 1 if bad else 0


SWEEP = ((8, 4, None), (16, 4, None), (16, 4, 128), (16, 4, 96), (32, 4, None), (64, 4, None), (32, 8, None),
         (64, 8, None), (128, 8, None))  # (block_rows, num_warps, maxnreg)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="200,000 rows only, fewer windows, no sweep")
    p.add_argument("--rows", type=int, nargs="+", help="batch sizes (default 200000 and 2000000)")
    p.add_argument("--json", type=Path, help="also write the results here as JSON")
    p.add_argument("--no-smoke", action="store_true", help="without CUDA, skip the interpreted smoke check")
    part = p.add_mutually_exclusive_group()
    part.add_argument("--no-sweep", action="store_true", help="skip the tile/warps/maxnreg sweep")
    part.add_argument("--sweep-only", action="store_true", help="only the sweep (after the exactness check)")
    p.add_argument("--no-compile-report", action="store_true", help="skip the registers/spills report")
    p.add_argument("--cpu", action="store_true",
                   help="no GPU: the whole benchmark interpreted on the CPU at a tiny size (checks the script)")
    args = p.parse_args()

    if args.cpu:
        os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels module is first imported (below)
        device = "cpu"
    elif not torch.cuda.is_available():
        print("drift_gpu: SKIPPED: no CUDA device here (torch.cuda.is_available() is False); "
              "the throughput figures need an NVIDIA GPU.")
        return 0 if args.no_smoke else smoke()
    else:
        device = "cuda"
        if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
            print("drift_gpu: unset TRITON_INTERPRET to benchmark the compiled kernels")
            return 2

    import triton

    from loopserve import kernels
    from loopserve.kernels import drift

    info = machine(torch=torch.__version__, triton=triton.__version__, device=device)
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, sms=props.multi_processor_count, l2_mib=getattr(props, "L2_cache_size", 0) / 2**20)
    print("machine:", json.dumps(info))
    if device == "cuda" and not args.no_compile_report:
        try:  # registers and spills of the compiled variants (ptxas -v), for reading the figures below
            from loopserve.kernels import aot

            arch = props.major * 10 + props.minor
            for name, regs in aot.compile_variants(arch).items():
                print(f"  sm_{arch} {name}: {regs}")
        except Exception as e:
            print(f"  (compile report unavailable: {type(e).__name__}: {e})"[:200])
    windows = 1 if args.cpu else 5 if args.quick else 15
    rows_list = args.rows or ([2_000] if args.cpu else [200_000] if args.quick else [200_000, 2_000_000])
    graph = device == "cuda"  # CUDA graphs: GPU time without Triton's launch overhead
    sweep = () if args.no_sweep or args.quick else SWEEP[-1:] if args.cpu else SWEEP  # interpreted: few programs

    bw = copy_bandwidth(windows, device)
    print(f"\ncopy baseline: dst.copy_(src) of {'1 GiB' if graph else '64 MiB'}: {bw / 1e9:.0f} GB/s (read + write)")
    results = {"machine": info, "copy_gbps": bw / 1e9, "cases": []}

    for rows in rows_list:
        case = build_case(rows, device)
        st = case["state"]
        ef = drift._edges_f32(st["edges"])
        bad = check(case, drift, kernels, ef)
        print(f"\n{rows:,} rows x 22 columns, float32: kernel vs torch reference: "
              f"{'equal' if not bad else 'MISMATCH: ' + ', '.join(bad)}")
        nbytes = case["x"].numel() * case["x"].element_size()
        l2 = (getattr(props, "L2_cache_size", 50 << 20) or (50 << 20)) if graph else 0
        xs = [case["x"]] + [case["x"].clone() for _ in range(max(1, math.ceil(3 * l2 / nbytes)) - 1)]

        runs = [] if args.sweep_only else [
            ("kernel, graph", lambda x: kernel_update(x, st, drift, ef), True),
            ("kernel, eager", lambda x: kernel_update(x, st, drift, ef), False),
            ("  bins only, graph", lambda x: kernel_update(x, st, drift, ef, ("bins",)), True),
            ("  moments only, graph", lambda x: kernel_update(x, st, drift, ef, ("moments",)), True),
            ("  categories (tl.histogram), graph", lambda x: kernel_update(x, st, drift, ef, ("cats",), "hist"), True),
            ("  categories (atomics), graph", lambda x: kernel_update(x, st, drift, ef, ("cats",), "atomic"), True),
            ("torch native (bucketize + bincount), eager", lambda x: torch_native_update(x, st), False),
            ("torch batched reference (searchsorted), eager", lambda x: torch_reference_update(x, st, kernels), False),
        ]
        if not graph:  # on the CPU every path runs eager: the parts keep their names with "eager"
            runs = [(n.replace(", graph", ", eager"), fn, False) for n, fn, _ in runs if n != "kernel, graph"]
        table = {}
        print(f"{'path':<48} {'µs/update':>10} {'Mrows/s':>9} {'GB/s of x':>10} {'of copy bw':>11}")
        for name, fn, use_graph in runs:
            try:
                t = per_update(fn, xs, windows, use_graph)
            except Exception as e:  # one failing path (e.g. capture) must not hide the others
                print(f"{name:<48} failed: {type(e).__name__}: {e}"[:200])
                continue
            gbps = nbytes / t / 1e9
            table[name.strip()] = {"us": t * 1e6, "rows_per_s": rows / t, "gbps": gbps, "of_copy_bw": gbps * 1e9 / bw}
            print(f"{name:<48} {t * 1e6:>10.1f} {rows / t / 1e6:>9.1f} {gbps:>10.0f} {gbps * 1e9 / bw:>10.0%}")
        if sweep:  # tile shape and warps: the compiled kernel's occupancy is not known here
            print(f"sweep, fused kernel {'from a CUDA graph' if graph else 'eager'} (block_rows, num_warps, maxnreg):")
            for br, nw, mr in sweep:
                fn = lambda x, br=br, nw=nw, mr=mr: drift.drift_update_(
                    x, numeric_cols=st["numeric_cols"], with_moments=True, check=False, block_rows=br, num_warps=nw,
                    maxnreg=mr,
                    edges=st["edges"], n_edges=st["n_edges"], counts=st["counts"], missing=st["missing"],
                    sums=st["sums"], edges_f32=ef, **{k: st[k] for k in ("cat_cols", "luts", "lut_sizes", "n_other", "cat_counts",
                                                        "cat_missing")})
                try:
                    t = per_update(fn, xs, windows, graph)
                except Exception as e:
                    print(f"  {br:>4} x {nw} x {mr}: failed: {type(e).__name__}: {e}"[:200])
                    continue
                table[f"sweep {br}x{nw}x{mr}"] = {"us": t * 1e6, "gbps": nbytes / t / 1e9, "of_copy_bw": nbytes / t / bw}
                print(f"  {br:>4} rows x {nw} warps, maxnreg {mr}: {t * 1e6:8.1f} µs  {nbytes / t / 1e9:6.0f} GB/s"
                      f"  {nbytes / t / bw:5.0%}")
        k_graph, k_eager = table.get("kernel, graph"), table.get("kernel, eager")
        native = table.get("torch native (bucketize + bincount), eager")
        print("ratios:")
        if k_graph:
            print(f"  kernel (graph) GB/s / copy GB/s      = {k_graph['of_copy_bw']:.2f}   (target >= 0.50)")
        if k_eager:
            print(f"  kernel (eager) GB/s / copy GB/s      = {k_eager['of_copy_bw']:.2f}")
        if native and k_eager:
            print(f"  kernel (eager) / torch native speed  = {native['us'] / k_eager['us']:.1f}x")
        if native and k_graph:
            print(f"  kernel (graph) / torch native speed  = {native['us'] / k_graph['us']:.1f}x")
        results["cases"].append({"rows": rows, "x_bytes": nbytes, "copies": len(xs), "equal": not bad,
                                 "mismatch": bad, "paths": table})
        if args.json:  # after each batch size: a run stopped part way keeps what it measured
            args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        del case, xs
        if graph:
            torch.cuda.empty_cache()

    if args.json:
        print(f"\nresults written to {args.json}")
    return 0 if all(c["equal"] for c in results["cases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
