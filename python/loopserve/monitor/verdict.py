"""From a window's accumulators and the reference profile to statistics and a verdict.

The verdict is built to be trusted in both directions:

- Every test's p-value comes from exact counts (bins, categories, missing values) or, for KS,
  is taken at the distance minus its error bound (the reference grid's, when the window kept every
  value; the sketches' and the sample's otherwise), so sketch noise alone cannot alarm.
- The family of tests in a window (every feature x every test) is corrected with Bonferroni:
  each test runs at alpha / tests, so a window without drift alarms with probability <= alpha.
- A significant test also needs an effect a user would care about (PSI, KS distance or a
  change in the missing rate over a floor), so a huge window does not alarm on a trivial shift:
  significance says a shift is real, the floor says it is large enough to matter (practical
  significance). A window whose only significant tests are under their floors is not called
  "no drift": its verdict is "significant, below the floor", and each such feature lists why in
  `below_floor`. KS is held to its floor by its exact lower bound (the larger of ks - margin and
  the exact distance at the bin edges), so a sketch error cannot lift it over.
- A window with fewer than `min_rows` rows gets no verdict ("insufficient data").
- Categories whose expected count in the window is below `min_expected` are pooled with
  "other" before the chi-square, so a high-cardinality feature with no drift stays quiet
  (the chi-square approximation is poor for sparse cells).
"""

from __future__ import annotations

import math

import msgspec
import numpy as np

from loopserve.config import DriftPolicy
from loopserve.monitor import statistics as st
from loopserve.monitor.exact_window import ReferenceCdf, compare
from loopserve.monitor.profile import CategoricalProfile, NumericProfile, ReferenceProfile
from loopserve.monitor.report import FeatureDrift, WindowDrift

SIGNIFICANT_BELOW_FLOOR = "significant, below the floor"
EVERY_VALUE, SAMPLE = "every value", "a sample"  # what a window's KS and Wasserstein-1 came from


def tests_per_window(profile: ReferenceProfile, with_outputs: bool) -> int:
    """numeric: binned chi-square, KS, missing rate; categorical: chi-square, missing rate."""
    features = list(profile.features) + (list(profile.outputs) if with_outputs else [])
    return sum(3 if isinstance(f, NumericProfile) else 2 for f in features)


def window_drift(window: dict, profile: ReferenceProfile, policy: DriftPolicy) -> WindowDrift:
    """Statistics and verdict of one window (a dict from the native DriftMonitor.windows())."""
    inputs = window["inputs"]
    outputs = window.get("outputs")
    with_outputs = outputs is not None and bool(profile.outputs)
    tests = tests_per_window(profile, with_outputs)
    alpha = policy.alpha / max(tests, 1)
    rows = int(inputs.rows)
    features = _tensor_features(inputs, profile.features, "input", policy, alpha)
    if with_outputs:
        features += _tensor_features(outputs, profile.outputs, "output", policy, alpha)
    drifted = [f.name for f in features if f.drifted]
    below_floor = [f.name for f in features if f.below_floor and not f.drifted]
    if rows < policy.min_rows:
        verdict = "insufficient data"
        drifted, below_floor = [], []
        features = [msgspec.structs.replace(f, drifted=False, reasons=[], below_floor=[]) for f in features]
    elif drifted:
        verdict = "drift"
    else:
        verdict = SIGNIFICANT_BELOW_FLOOR if below_floor else "no drift"
    return WindowDrift(start=window["start"], end=window["end"], closed=window["closed"], rows=rows,
                       verdict=verdict, drifted_features=drifted, tests=tests, alpha_per_test=alpha,
                       features=features, below_floor_features=below_floor)


def _tensor_features(acc, profiles, role: str, policy: DriftPolicy, alpha: float) -> list[FeatureDrift]:
    out, numeric_i, categorical_i = [], 0, 0
    for p in profiles:
        if isinstance(p, NumericProfile):
            out.append(_numeric(acc, numeric_i, p, role, policy, alpha))
            numeric_i += 1
        else:
            out.append(_categorical(acc, categorical_i, p, role, policy, alpha))
            categorical_i += 1
    return out


def _missing(missing: int, rows: int, ref_missing: int, ref_rows: int):
    rate = missing / rows if rows else 0.0
    ref_rate = ref_missing / ref_rows if ref_rows else 0.0
    p = st.two_proportions_pvalue(ref_missing, ref_rows, missing, rows) if rows else 1.0
    return rate, ref_rate, p


def _numeric(acc, i: int, p: NumericProfile, role: str, policy: DriftPolicy, alpha: float) -> FeatureDrift:
    counts = acc.bin_counts(i)
    missing = int(acc.numeric_missing(i))
    rows = int(counts.sum()) + missing
    ref_counts = np.asarray(p.counts)
    chi2, chi2_p, df = st.chi_square_two_sample(ref_counts, counts)
    psi = st.psi(ref_counts, counts) if counts.sum() else 0.0
    js = st.js_distance(ref_counts, counts) if counts.sum() else 0.0
    rate, ref_rate, missing_p = _missing(missing, rows, p.missing, p.count + p.missing)
    moments = acc.moments(i)
    ks = ks_p = margin = ks_low = w1 = w1_bounds = ks_sample = source = None
    values, grid = acc.exact_values(i), ReferenceCdf.of_profile(p)
    if values is not None and grid is not None:
        if values.size:  # every value of the window against the reference's grid: bounds always hold
            exact = compare(grid, values)
            ks, margin, ks_sample, source = exact.ks, exact.ks_margin, int(values.size), EVERY_VALUE
            ks_p = st.ks_test_pvalue(max(ks - margin, 0.0), grid.n, values.size)
            w1, w1_bounds = exact.wasserstein, [exact.wasserstein_low, exact.wasserstein_high]
    elif values is not None and values.size or acc.quantiles(i).count > 0:
        # A sample of the window (it outgrew exact_values, or is older than exact_windows), or its
        # values sketched whole for a profile without a grid (made before grids were kept).
        reference, window = st.Sketched.of_profile(p), st.Sketched.of_window(acc, i)
        sketch = window.sketch
        ks = st.ks_distance(reference, window)
        margin = st.ks_margin(reference.sketch, sketch, window.rows)
        ks_p = st.ks_pvalue(reference.sketch, sketch, ks)
        ks_sample, source = int(sketch.count), EVERY_VALUE if values is not None else SAMPLE
        w1, w1_low, w1_high = st.wasserstein_bounds(reference, window)
        w1_bounds = [w1_low, w1_high]
    if ks is not None:
        ks_low = max(ks - margin, st.ks_at_edges(ref_counts, counts))
    reasons, below_floor = [], []
    if chi2_p < alpha:
        (reasons if psi >= policy.min_psi else below_floor).append(
            f"binned distribution: chi2 p={chi2_p:.2g} < {alpha:.2g}, psi {psi:.3g} "
            f"{'>=' if psi >= policy.min_psi else '<'} {policy.min_psi}")
    if ks_p is not None and ks_p < alpha:
        (reasons if ks_low >= policy.min_ks else below_floor).append(
            f"ks {ks:.3g} (+-{margin:.2g}, at least {ks_low:.3g} "
            f"{'>=' if ks_low >= policy.min_ks else '<'} {policy.min_ks}) p={ks_p:.2g} < {alpha:.2g}")
    _missing_reason(reasons, below_floor, rate, ref_rate, missing_p, alpha, policy)
    return FeatureDrift(
        name=p.name, kind="numeric", role=role, rows=rows, missing_rate=rate, reference_missing_rate=ref_rate,
        missing_pvalue=missing_p, psi=psi, js_distance=js, chi2=chi2, chi2_pvalue=chi2_p, chi2_df=df,
        drifted=bool(reasons), reasons=reasons, below_floor=below_floor, ks=ks, ks_margin=margin,
        ks_low=ks_low, ks_pvalue=ks_p, ks_sample=ks_sample, distribution_from=source, wasserstein=w1,
        wasserstein_bounds=w1_bounds,
        mean=_finite(moments.mean), reference_mean=p.mean,
        std=_finite(math.sqrt(moments.variance)) if moments.count else None, reference_std=p.std)


def _missing_reason(reasons: list, below_floor: list, rate: float, ref_rate: float, p: float, alpha: float,
                    policy: DriftPolicy) -> None:
    if p < alpha:
        over = abs(rate - ref_rate) >= policy.min_missing_change
        (reasons if over else below_floor).append(
            f"missing rate {rate:.3g} vs {ref_rate:.3g} (p={p:.2g}), change "
            f"{'>=' if over else '<'} {policy.min_missing_change}")


def _categorical(acc, i: int, p: CategoricalProfile, role: str, policy: DriftPolicy,
                 alpha: float) -> FeatureDrift:
    counts = acc.category_counts(i).astype(np.float64)
    missing = int(acc.category_missing(i))
    rows = int(counts.sum()) + missing
    ref_counts = np.asarray(p.counts, dtype=np.float64)
    ref_pooled, cur_pooled = pool_rare(ref_counts, counts, policy.min_expected)
    chi2, chi2_p, df = st.chi_square_two_sample(ref_pooled, cur_pooled)
    psi = st.psi(ref_pooled, cur_pooled) if cur_pooled.sum() else 0.0
    js = st.js_distance(ref_pooled, cur_pooled) if cur_pooled.sum() else 0.0
    rate, ref_rate, missing_p = _missing(missing, rows, p.missing, p.count + p.missing)
    reasons, below_floor = [], []
    if chi2_p < alpha:
        (reasons if psi >= policy.min_psi else below_floor).append(
            f"category mix: chi2 p={chi2_p:.2g} < {alpha:.2g}, psi {psi:.3g} "
            f"{'>=' if psi >= policy.min_psi else '<'} {policy.min_psi}")
    _missing_reason(reasons, below_floor, rate, ref_rate, missing_p, alpha, policy)
    return FeatureDrift(
        name=p.name, kind="categorical", role=role, rows=rows, missing_rate=rate,
        reference_missing_rate=ref_rate, missing_pvalue=missing_p, psi=psi, js_distance=js, chi2=chi2,
        chi2_pvalue=chi2_p, chi2_df=df, drifted=bool(reasons), reasons=reasons, below_floor=below_floor)


def pool_rare(reference: np.ndarray, current: np.ndarray, min_expected: float) -> tuple[np.ndarray, np.ndarray]:
    """Pool the categories expected fewer than `min_expected` times in the current window
    (from the reference proportions) into the last slot, "other"."""
    n_ref, n_cur = reference.sum(), current.sum()
    if n_ref == 0 or n_cur == 0:
        return reference, current
    expected = reference / n_ref * n_cur
    keep = expected >= min_expected
    keep[-1] = False  # "other" is the pool
    pooled_ref = np.append(reference[keep], reference[~keep].sum())
    pooled_cur = np.append(current[keep], current[~keep].sum())
    return pooled_ref, pooled_cur


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None
