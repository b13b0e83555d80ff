"""Drift monitoring benchmark: streaming update throughput and the cost to serving.

Usage: .venv/bin/python bench/drift.py [--quick] [--rows N] [--rounds R] [--no-evidently] [--no-serving]

1. Update throughput (rows/s) of loopserve's native accumulators for 20 numeric features
   (10 quantile bins each) and 2 categorical ones (10 and 1,000 categories), in 200,000-row
   windows, against, on the same data in the same run:
   - numpy: per numeric feature searchsorted + bincount over the same edges, per categorical
     bincount over the codes (only the bin counts: no moments, no quantile sketch);
   - Evidently's data drift report (DataDriftPreset) on the same reference and window, in its
     own virtual environment (bench/.venvs/evidently, created on first use; skipped with a note
     when it cannot be installed).
   loopserve is timed as the monitor runs it: bin counts, moments, category counts, extremes,
   and every value kept (drift.exact_values, 262,144 rows by default: KS and Wasserstein-1 from
   every value); and, for a window past exact_values, with the KLL sketches fed a random sample
   of the rows instead (each with probability 1/k, k from the window size: about 8k rows per
   window) or every row. Times are medians of the rounds, interleaved with numpy's.
2. Serving throughput with monitoring on against off: two loopserve servers with the tiny MLP,
   one with a reference profile, driven by wrk (JSON, c=16) in alternating rounds; the ratio is
   the median of per-round ratios (target >= 0.95).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS threads would spin on the other core

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runinfo import cpu_model, source_digest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
EVIDENTLY_VENV = REPO_ROOT / "bench" / ".venvs" / "evidently"
NUMERIC, BINS = 20, 10
CATEGORIES = (10, 1000)


def make_data(rng, rows: int, shift: float = 0.0) -> np.ndarray:
    X = np.empty((rows, NUMERIC + len(CATEGORIES)), dtype=np.float32)
    X[:, :NUMERIC] = rng.standard_normal((rows, NUMERIC)) * np.arange(1, NUMERIC + 1) + shift
    X[:, NUMERIC] = rng.integers(0, CATEGORIES[0], rows)
    X[:, NUMERIC + 1] = np.minimum(rng.zipf(1.3, rows) - 1, CATEGORIES[1] - 1)
    return X


def medians_of(fns: dict, rounds: int) -> dict:
    """The median CPU time of each function over `rounds` rounds, each round calling every
    function once in turn, so a burst of load from another process hits them all alike (and the
    time the process waits for a core is not counted: all of them run on the calling thread)."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.thread_time()
            fn()
            times[name].append(time.thread_time() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_update(rows: int, rounds: int, evidently: bool) -> list[dict]:
    from loopserve import _core
    from loopserve.monitor.monitor import QUANTILE_SAMPLE_TARGET, native_spec
    from loopserve.monitor.profile import build_profile

    rng = np.random.default_rng(0)
    reference, window = make_data(rng, rows), make_data(rng, rows, shift=0.05)
    names = [f"f{i}" for i in range(NUMERIC)] + ["small_cat", "big_cat"]
    profile = build_profile(reference, names, categorical=["small_cat", "big_cat"])
    numeric, categorical = native_spec(profile.features)
    every = max(1, -(-rows // QUANTILE_SAMPLE_TARGET))

    def loopserve_update(kll_every, exact_values):
        def run():
            _core.TensorAccumulator(numeric, categorical, kll_every=kll_every, exact_values=exact_values).update(window)
        return run

    edges = [np.asarray(f.edges) for f in profile.features[:NUMERIC]]
    luts = [f.lookup_table() for f in profile.features[NUMERIC:]]

    def numpy_update():
        for j in range(NUMERIC):
            np.bincount(np.searchsorted(edges[j], window[:, j], side="right"), minlength=len(edges[j]) + 1)
        for c, lut in enumerate(luts):
            codes = window[:, NUMERIC + c].astype(np.int64)
            np.bincount(np.where(codes < lut.size, lut[np.minimum(codes, lut.size - 1)], lut.max() + 1))

    variants = {"loopserve native (every value kept: the default)": loopserve_update(every, 1 << 18),
                f"loopserve native (KLL on a 1/{every} sample: exact_values 0)": loopserve_update(every, 0),
                "loopserve native (KLL every row: exact_values 0)": loopserve_update(1, 0)}
    took = medians_of({"numpy": numpy_update, **variants}, rounds)
    numpy_s = took["numpy"]
    results = [{"what": "numpy searchsorted + bincount (bins only)", "rows_per_s": rows / numpy_s}]
    for label in variants:
        results.append({"what": label, "rows_per_s": rows / took[label], "vs_numpy": numpy_s / took[label]})
    if evidently:
        results.append(run_evidently(reference, window, names))
        if results[-1].get("rows_per_s"):
            results[-1]["vs_loopserve"] = results[1]["rows_per_s"] / results[-1]["rows_per_s"]
    return results


EVIDENTLY_SCRIPT = r"""
import json, sys, time
import numpy as np, pandas as pd
d = np.load(sys.argv[1])
names = json.loads(sys.argv[2])
ref = pd.DataFrame(d["reference"], columns=names)
cur = pd.DataFrame(d["window"], columns=names)
for c in ("small_cat", "big_cat"):
    ref[c] = ref[c].astype(int).astype(str)
    cur[c] = cur[c].astype(int).astype(str)
try:
    from evidently import Report, Dataset, DataDefinition
    from evidently.presets import DataDriftPreset
    definition = DataDefinition(numerical_columns=names[:-2], categorical_columns=names[-2:])
    def run():
        Report([DataDriftPreset()]).run(Dataset.from_pandas(cur, data_definition=definition),
                                        Dataset.from_pandas(ref, data_definition=definition))
except ImportError:
    from evidently.report import Report
    from evidently.metric_preset import DataDriftPreset
    from evidently import ColumnMapping
    mapping = ColumnMapping(numerical_features=names[:-2], categorical_features=names[-2:])
    def run():
        Report(metrics=[DataDriftPreset()]).run(reference_data=ref, current_data=cur, column_mapping=mapping)
import evidently
t = time.perf_counter(); run(); took = time.perf_counter() - t
print(json.dumps({"seconds": took, "version": evidently.__version__}))
"""


def run_evidently(reference, window, names) -> dict:
    python = EVIDENTLY_VENV / "bin" / "python"
    if not python.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(EVIDENTLY_VENV)], check=True, timeout=120)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "evidently",
                            "pandas<2.3"], check=True,  # evidently 0.7 imports a pandas internal removed in 2.3
                           timeout=900, capture_output=True)
        except (subprocess.SubprocessError, OSError) as e:
            return {"what": "Evidently DataDriftPreset", "note": f"could not install evidently: {e}"}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.npz"
        np.savez(data, reference=reference, window=window)
        proc = subprocess.run([str(python), "-c", EVIDENTLY_SCRIPT, str(data), json.dumps(names)],
                              capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return {"what": "Evidently DataDriftPreset", "note": f"failed: {proc.stderr.strip()[-300:]}"}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"what": f"Evidently {out['version']} DataDriftPreset (report on the window)",
            "rows_per_s": len(window) / out["seconds"]}


def bench_serving(seconds: float, rounds: int, work: Path) -> dict:
    import serving
    from loopserve import zoo
    from loopserve.monitor.profile import build_profile

    import torch

    repos = {}
    for name, monitored in (("off", False), ("on", True)):
        repo = work / f"repo-{name}"
        model_dir = zoo.write_model_dir(repo, serving.MODEL, zoo.tiny_mlp(), fmt="onnx", max_batch_size=64,
                                        max_queue_delay_us=500, extra_config="threads: 1\n")
        if monitored:
            rng = np.random.default_rng(0)
            ref = rng.uniform(0, 1, (20_000, serving.N_IN)).astype(np.float32)
            with torch.no_grad():
                out = zoo.tiny_mlp()(torch.from_numpy(ref)).numpy()
            build_profile(ref, outputs=out).save(model_dir / "1")
        repos[name] = repo
    servers = {}
    for name, repo in repos.items():
        port = serving.free_port()
        argv = [sys.executable, "-m", "loopserve.cli", "serve", "--model-repository", str(repo),
                "--host", "127.0.0.1", "--port", str(port)]
        servers[name] = serving.Server(f"loopserve-{name}", argv, port, log_dir=work)
        servers[name].start()
    try:
        for s in servers.values():
            why = s.ready()
            if why:
                return {"note": f"{s.name}: {why}"}
        script = serving.wrk_script(work)
        for s in servers.values():  # warm up
            serving.run_wrk(s, 16, 1, script)
        ratios, on_rates, off_rates = [], [], []
        for i in range(rounds):
            order = ("off", "on") if i % 2 == 0 else ("on", "off")
            rates = {name: serving.run_wrk(servers[name], 16, seconds, script).req_s for name in order}
            off_rates.append(rates["off"])
            on_rates.append(rates["on"])
            ratios.append(rates["on"] / rates["off"])
        with urllib_open(f"{servers['on'].url}/v2/models/{serving.MODEL}/drift?windows=1") as r:
            report = json.load(r)
        return {"ratio_on_off": statistics.median(ratios), "ratios": ratios,
                "req_s_off": statistics.median(off_rates), "req_s_on": statistics.median(on_rates),
                "monitor": report["monitor"]}
    finally:
        for s in servers.values():
            s.stop()


def urllib_open(url):
    import urllib.request

    return urllib.request.urlopen(url, timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-evidently", action="store_true")
    ap.add_argument("--no-serving", action="store_true")
    args = ap.parse_args()
    rows = 50_000 if args.quick else args.rows
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; source {source_digest()}")
    print(f"\n## update throughput: {NUMERIC} numeric ({BINS} bins) + categorical {CATEGORIES}, {rows:,}-row window\n")
    print("| what | rows/s | ratio |")
    print("| --- | ---: | ---: |")
    for r in bench_update(rows, 3 if args.quick else args.rounds, not args.no_evidently):
        if "rows_per_s" not in r:
            print(f"| {r['what']} | — | {r.get('note', '')} |")
            continue
        ratio = (f"{r['vs_numpy']:.1f}x numpy" if "vs_numpy" in r else
                 f"loopserve is {r['vs_loopserve']:.0f}x faster" if "vs_loopserve" in r else "baseline")
        print(f"| {r['what']} | {r['rows_per_s']:,.0f} | {ratio} |")
    if not args.no_serving:
        with tempfile.TemporaryDirectory() as tmp:
            res = bench_serving(2.0 if args.quick else 4.0, 4 if args.quick else 8, Path(tmp))
        print("\n## serving with monitoring on vs off (tiny MLP, wrk JSON c=16, alternating rounds)\n")
        if "note" in res:
            print(res["note"])
        else:
            print(f"req/s off {res['req_s_off']:,.0f}, on {res['req_s_on']:,.0f}; "
                  f"median per-round ratio on/off {res['ratio_on_off']:.3f} (target >= 0.95)")
            print(f"per-round ratios: {', '.join(f'{r:.3f}' for r in res['ratios'])}")
            print(f"monitor: {res['monitor']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
