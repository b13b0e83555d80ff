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

Sketch statistics take two KLL sketches (loopserve._core.KllSketch):

- Kolmogorov-Smirnov distance D = sup_x |F_r(x) - F_c(x)|, evaluated at the quantiles of both
  sketches on a fine grid; each sketch's rank error adds to it, so the true D lies within
  D +- (eps_r + eps_c) (`ks_margin`). Its p-value is the exact two-sample distribution
  (scipy.stats.kstwo) at the effective size n_r * n_c / (n_r + n_c), computed at D minus the
  margin, so sketch noise alone does not make a small p-value.
- Wasserstein-1 = integral over q in (0, 1) of |Q_r(q) - Q_c(q)| dq, by the midpoint rule on
  `grid` points of the sketches' quantile functions, in the feature's units.
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


def ks_distance(reference, current, grid: int = 512) -> float:
    points = np.unique(np.concatenate([_quantiles(reference, grid), _quantiles(current, grid)]))
    return float(max(abs(reference.rank(x) - current.rank(x)) for x in points))


def ks_margin(reference, current) -> float:
    """How far the sketched D may be from the exact one."""
    return reference.normalized_rank_error(reference.k) + current.normalized_rank_error(current.k)


def ks_pvalue(reference, current, distance: float | None = None) -> float:
    d = ks_distance(reference, current) if distance is None else distance
    n = reference.count * current.count / (reference.count + current.count)
    return float(_scipy_stats.kstwo.sf(max(d - ks_margin(reference, current), 0.0), max(int(round(n)), 1)))


def wasserstein(reference, current, grid: int = 1000) -> float:
    q = (np.arange(grid) + 0.5) / grid
    return float(np.mean(np.abs(_quantiles_at(reference, q) - _quantiles_at(current, q))))


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    mask = p > 0
    return float(np.sum(p[mask] * np.log2(p[mask] / q[mask])))


def _quantiles(sketch, grid: int) -> np.ndarray:
    return _quantiles_at(sketch, np.linspace(0.0, 1.0, grid + 1))


def _quantiles_at(sketch, qs: np.ndarray) -> np.ndarray:
    return np.array([sketch.quantile(float(q)) for q in qs])


def _same_bins(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"reference and current have {a.size} and {b.size} bins; they need the same bins")
