"""Drift statistics against their exact values from all rows: the worst error seen next to the
bound each statistic states (loopserve/monitor/exact_window.py for a window that kept every value,
loopserve/monitor/statistics.py and wasserstein.py for one that kept a sample).

Usage: .venv/bin/python bench/drift_accuracy.py [--seeds N] [--reference-rows N]

Eight feature families (normal, lognormal, Student t with 2 degrees of freedom, Pareto, Poisson,
zero-inflated, a bimodal mixture, NaN-heavy), shifts 0, 0.05 and 0.3, windows of 10,000 and
200,000 rows, against scipy (ks_2samp, wasserstein_distance) and numpy bin counts on all rows.
Each window is accumulated twice, as the monitor does: with the defaults (every value kept, up to
drift.exact_values = 262,144 rows), and with exact_values = 0 (the quantile sketch fed a sample of
about 8,000 rows, what a window past exact_values falls back to).
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
from scipy import stats
from scipy.spatial.distance import jensenshannon

from loopserve import _core
from loopserve.datasets.families import FAMILIES, draw
from loopserve.monitor import statistics as st
from loopserve.monitor.exact_window import ReferenceCdf, compare
from loopserve.monitor.monitor import QUANTILE_SAMPLE_TARGET
from loopserve.monitor.profile import build_profile

PATHS = ("every", "sample")


def one(reference, window):
    feature = build_profile(reference[:, None], ["x"]).features[0]
    every = max(1, math.ceil(len(window) / QUANTILE_SAMPLE_TARGET))
    accs = {path: _core.TensorAccumulator([(0, feature.edges)], [], kll_every=every,
                                          **({} if path == "every" else {"exact_values": 0})) for path in PATHS}
    for acc in accs.values():
        acc.update(np.ascontiguousarray(window[:, None]))
    r, c = reference[np.isfinite(reference)], window[np.isfinite(window)]
    edges = np.asarray(feature.edges)
    rc = np.bincount(np.digitize(r, edges), minlength=edges.size + 1)
    cc = np.bincount(np.digitize(c, edges), minlength=edges.size + 1)
    rs, cs = (rc + 0.5) / (rc.sum() + 0.5 * rc.size), (cc + 0.5) / (cc.sum() + 0.5 * cc.size)
    psi_exact = stats.entropy(cs, rs) + stats.entropy(rs, cs)
    js_exact = jensenshannon(rc / rc.sum(), cc / cc.sum(), base=2)
    ks_exact, w_exact = stats.ks_2samp(r, c).statistic, stats.wasserstein_distance(r, c)
    iqr = np.subtract(*np.percentile(r, [75, 25]))
    counts = accs["every"].bin_counts(0)
    out = {"psi": abs(st.psi(feature.counts, counts) - psi_exact),
           "js": abs(st.js_distance(feature.counts, counts) - js_exact), "w_checked": w_exact > 0.01 * iqr}

    exact = compare(ReferenceCdf.of_profile(feature), accs["every"].exact_values(0))
    sampled = accs["sample"]
    ref, cur = st.Sketched.of_profile(feature), st.Sketched.of_window(sampled, 0)
    w, low, high = st.wasserstein_bounds(ref, cur)
    found = {"every": (exact.ks, exact.ks_margin, exact.wasserstein, exact.wasserstein_low, exact.wasserstein_high),
             "sample": (st.ks_distance(ref.sketch, sampled.quantiles(0)),
                        st.ks_margin(ref.sketch, sampled.quantiles(0), cur.rows), w, low, high)}
    for path, (ks, margin, w, low, high) in found.items():
        out.update({f"{path}_ks": abs(ks - ks_exact), f"{path}_ks_margin": margin,
                    f"{path}_ks_outside": abs(ks - ks_exact) > margin, f"{path}_w_rel": abs(w - w_exact) / w_exact,
                    f"{path}_w_outside": not (low * (1 - 1e-9) <= w_exact <= high * (1 + 1e-9)),
                    f"{path}_w_width": (high - low) / w_exact})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--reference-rows", type=int, default=100_000)
    args = ap.parse_args()
    rows = []
    for family in FAMILIES:
        for window_rows in (10_000, 200_000):
            for shift in (0.0, 0.05, 0.3):
                for seed in range(args.seeds):
                    rng = np.random.default_rng([seed, FAMILIES.index(family), window_rows, int(shift * 100)])
                    res = one(draw(rng, family, args.reference_rows, 0.0), draw(rng, family, window_rows, shift))
                    res.update(family=family, window=window_rows, shift=shift)
                    rows.append(res)
    print(f"{len(rows)} windows: {len(FAMILIES)} families x windows of 10k and 200k rows x shifts 0, 0.05, 0.3 x "
          f"{args.seeds} seeds; reference {args.reference_rows:,} rows\n")
    print("| statistic | window's values | worst error against exact | stated bound | outside the bound |")
    print("| --- | --- | ---: | --- | ---: |")
    print(f"| PSI | - | {max(r['psi'] for r in rows):.1e} | exact (same bins, exact counts) | - |")
    print(f"| Jensen-Shannon | - | {max(r['js'] for r in rows):.1e} | exact | - |")
    labels = {"every": "every value (default)", "sample": "a sample (past exact_values)"}
    for path in PATHS:
        worst = max(rows, key=lambda r: r[f"{path}_ks"] / r[f"{path}_ks_margin"])
        print(f"| KS | {labels[path]} | {max(r[f'{path}_ks'] for r in rows):.5f} (at most "
              f"{worst[f'{path}_ks'] / worst[f'{path}_ks_margin']:.0%} of its margin) | +- ks_margin, "
              f"{min(r[f'{path}_ks_margin'] for r in rows):.5f}..{max(r[f'{path}_ks_margin'] for r in rows):.5f} | "
              f"{sum(r[f'{path}_ks_outside'] for r in rows)} |")
    for path in PATHS:
        print(f"| Wasserstein-1 | {labels[path]} | {max(r[f'{path}_w_rel'] for r in rows):.2%} relative | inside "
              f"its bounds (median width {np.median([r[f'{path}_w_width'] for r in rows]):.2f} x exact) | "
              f"{sum(r[f'{path}_w_outside'] for r in rows)} |")
    checked = [r for r in rows if r["w_checked"]]
    print(f"\nWasserstein-1, windows where exact > 1% of the reference IQR ({len(checked)}):")
    print("| window's values | outside 2% | outside 5% | outside 10% | median error | worst error |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for path in PATHS:
        e = np.array([r[f"{path}_w_rel"] for r in checked])
        print(f"| {labels[path]} | {(e > 0.02).sum()} | {(e > 0.05).sum()} | {(e > 0.1).sum()} | {np.median(e):.3%} | "
              f"{e.max():.2%} |")
    print()
    print("| family | window | worst W1 error from every value / from a sample, at shift 0; 0.05; 0.3 |")
    print("| --- | ---: | --- |")
    for family in FAMILIES:
        for window_rows in (10_000, 200_000):
            sel = [r for r in checked if r["family"] == family and r["window"] == window_rows]
            cells = []
            for shift in (0.0, 0.05, 0.3):
                at = [r for r in sel if r["shift"] == shift]
                cells.append(" / ".join(f"{max(r[f'{p}_w_rel'] for r in at):.2%}" for p in PATHS) if at else "-")
            if sel:
                print(f"| {family} | {window_rows:,} | {'; '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
