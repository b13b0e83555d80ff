"""Drift statistics between a reference distribution and a current window, with exact
definitions, so their values can be compared with other tools'.

Binned statistics take bin counts over the same bins (the reference profile's quantile bin
edges for numeric features, category codes for categorical ones):

- PSI = sum_i (c_i - r_i) * ln(c_i / r_i), natural log, where r_i and c_i are the reference and
  current proportions after additive smoothing: p_i = (n_i + a) / (n + a * B), with a = 0.5 and
  B bins. Smoothing keeps an empty bin finite (Evidently instead replaces an empty bin's share
  by 0.0001; whylogs drops it).
- Jensen-Shannon distance = sqrt(JSD), JSD = (KL(r || m) + KL(c || m)) / 2, m = (r + c) / 2,
  log base 2, so it lies in [0, 1]; unsmoothed proportions (m is never 0 where r or c is not).
  This is scipy.spatial.distance.jensenshannon(r, c, base=2).
- Chi-square (categorical): sum_i (n_c,i - e_i)^2 / e_i with e_i = n_c * r_i from the smoothed
  reference proportions, B - 1 degrees of freedom; its p-value from scipy.
- Two-sample chi-square (the drift test over bins, numeric or categorical): the reference is a
  sample too, so its counts are not taken as the truth: with R and C rows,
  X = sum_i (sqrt(C/R) r_i - sqrt(R/C) c_i)^2 / (r_i + c_i) over bins where r_i + c_i > 0,
  with (those bins - 1) degrees of freedom (Press et al., Numerical Recipes, chstwo).

Sketch statistics take two KLL sketches (loopserve._core.KllSketch), each read as the weighted
distribution of the items it retains:

- Kolmogorov-Smirnov distance D = sup_x |F_r(x) - F_c(x)|, exact between the two sketched
  distributions; each sketch's rank error adds to it, so the true D lies within
  D +- (eps_r + eps_c) (`ks_margin`). Its p-value is the exact two-sample distribution
  (scipy.stats.kstwo) at the effective size n_r * n_c / (n_r + n_c), computed at D minus the
  margin, so sketch noise alone does not make a small p-value. When a sketch saw a sample of
  the rows (every k-th), n is the sample's size.
- Wasserstein-1 = integral of |F_r(x) - F_c(x)| dx, exact between the two sketched
  distributions, in the feature's units.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as _scipy_stats

SMOOTHING = 0.5


def smoothed_proportions(counts, smoothing: float = SMOOTHING) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    return (counts + smoothing) / (counts.sum() + smoothing * counts.size)


def psi(reference_counts, current_counts, smoothing: float = SMOOTHING) -> float:
    r = smoothed_proportions(reference_counts, smoothing)
    c = smoothed_proportions(current_counts, smoothing)
    _same_bins(r, c)
    return float(np.sum((c - r) * np.log(c / r)))


def js_distance(reference_counts, current_counts) -> float:
    r = np.asarray(reference_counts, dtype=np.float64)
    c = np.asarray(current_counts, dtype=np.float64)
    _same_bins(r, c)
    r, c = r / r.sum(), c / c.sum()
    m = (r + c) / 2
    divergence = (_kl(r, m) + _kl(c, m)) / 2
    return math.sqrt(max(divergence, 0.0))


def chi_square(reference_counts, current_counts, smoothing: float = SMOOTHING) -> tuple[float, float]:
    """(statistic, p-value) of the current counts against the reference proportions."""
    current = np.asarray(current_counts, dtype=np.float64)
    expected = smoothed_proportions(reference_counts, smoothing) * current.sum()
    _same_bins(expected, current)
    statistic = float(np.sum((current - expected) ** 2 / expected))
    return statistic, float(_scipy_stats.chi2.sf(statistic, current.size - 1))


def chi_square_two_sample(reference_counts, current_counts) -> tuple[float, float, int]:
    """(statistic, p-value, degrees of freedom) of the two-sample chi-square over the same bins."""
    r = np.asarray(reference_counts, dtype=np.float64)
    c = np.asarray(current_counts, dtype=np.float64)
    _same_bins(r, c)
    used = (r + c) > 0
    r, c = r[used], c[used]
    n_r, n_c = r.sum(), c.sum()
    df = int(used.sum()) - 1
    if n_r == 0 or n_c == 0 or df < 1:
        return 0.0, 1.0, max(df, 0)
    statistic = float(np.sum((math.sqrt(n_c / n_r) * r - math.sqrt(n_r / n_c) * c) ** 2 / (r + c)))
    return statistic, float(_scipy_stats.chi2.sf(statistic, df)), df


def two_proportions_pvalue(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float:
    """p-value that two rates (say, missing values in the reference and a window) are equal:
    the two-sample chi-square over (hits, misses), one degree of freedom."""
    return chi_square_two_sample([hits_a, n_a - hits_a], [hits_b, n_b - hits_b])[1]


def sorted_view(sketch) -> tuple[np.ndarray, np.ndarray]:
    """The sketch's retained items, sorted, and their cumulative weight fractions (its CDF)."""
    values, weights = sketch.sorted_view()
    values = np.asarray(values, dtype=np.float64)
    cdf = np.cumsum(np.asarray(weights, dtype=np.float64))
    return values, cdf / cdf[-1] if cdf.size else cdf


def _cdfs_on_union(reference, current):
    rv, rc = sorted_view(reference)
    cv, cc = sorted_view(current)
    points = np.union1d(rv, cv)
    f_r = np.concatenate([[0.0], rc])[np.searchsorted(rv, points, side="right")]
    f_c = np.concatenate([[0.0], cc])[np.searchsorted(cv, points, side="right")]
    return points, f_r, f_c


def ks_distance(reference, current) -> float:
    if reference.count == 0 or current.count == 0:
        return float("nan")
    _, f_r, f_c = _cdfs_on_union(reference, current)
    return float(np.max(np.abs(f_r - f_c)))


def ks_margin(reference, current) -> float:
    """How far the sketched D may be from the exact one."""
    return reference.normalized_rank_error(reference.k) + current.normalized_rank_error(current.k)


def ks_pvalue(reference, current, distance: float | None = None) -> float:
    d = ks_distance(reference, current) if distance is None else distance
    if not np.isfinite(d):
        return 1.0
    n = reference.count * current.count / (reference.count + current.count)
    return float(_scipy_stats.kstwo.sf(max(d - ks_margin(reference, current), 0.0), max(int(round(n)), 1)))


def wasserstein(reference, current) -> float:
    if reference.count == 0 or current.count == 0:
        return float("nan")
    points, f_r, f_c = _cdfs_on_union(reference, current)
    return float(np.sum(np.abs(f_r - f_c)[:-1] * np.diff(points)))


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    mask = p > 0
    return float(np.sum(p[mask] * np.log2(p[mask] / q[mask])))


def _same_bins(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"reference and current have {a.size} and {b.size} bins; they need the same bins")
