"""Wasserstein-1 between a reference profile's numeric feature and a window's, from what both
keep (loopserve.monitor.statistics.Sketched): exact per-bin counts and sums, exact extremes, the
KLL sketches and the exact count, mean, min and max.

Wasserstein-1 W = integral of |F_r - F_c| dx = the sum over cells of the integral of |g|,
g = F_r - F_c. Both sides keep exact per-bin counts and sums of their values over the profile's
bins (the profile from all reference rows, the accumulators from every window row) and their
extremes exactly (the profile its PROFILE_EXTREMES smallest and largest values, a window its k):
above the smallest kept top value every value is kept, so both CDFs are exact above the higher
of the two sides' thresholds (and below the lower of the bottom ones). The cells are the bins,
with the tails cut at every kept value where both sides are exact. The integral of g over each
cell is exact: over [a, b), integral of F = F(a) (b - a) + sum over the cell's values of
(b - v) / n (the outer bins end at the overall min and max, exact from the moments; the tail
cells from the kept values). So W is exact wherever g keeps one sign inside each cell (any
clear location, scale or mixture-weight shift; between two kept tail values always). Where the
data leave g's sign open inside a cell, the estimate is E[integral of |g|] under a model of g
there (see _expected_abs_integral), conditioned on g at the cell's ends and its exact integral.
`wasserstein_bounds` gives [low, high] that holds whenever the rank and sampling bounds do and the
bin sums are within SUM_TOLERANCE, and the estimate is clipped into it: per cell, low = |integral
of g| or what the bands force apart, high = the least of |integral of g| + 2 min(largest g+, g-
the bands allow), the bands' own bound, and |g(a)| (b - a) + the within-cell parts of both CDFs
(exact, from the sums; from either end). Without extremes (a profile or window payload made
before they were kept) the cells are the bins alone; without bin sums it falls back to the exact
mean shift plus the sketches' crossing part, 2 min(integral of g+, integral of g-), clamped into
the sketch-only interval.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats as _scipy_stats

if TYPE_CHECKING:
    from loopserve.monitor.statistics import Sketched


def wasserstein_bounds(reference: Sketched, current: Sketched, crossings: bool = True) -> tuple[float, float, float]:
    """(estimate, low, high) of W1 between all the reference's and all the window's values
    (see the module docstring). crossings=False leaves out the within-cell model: the estimate is
    then the sum of |integral of g| per cell (raised to the bands' forced part), for comparison."""
    if reference.sketch.count == 0 or current.sketch.count == 0:
        return float("nan"), float("nan"), float("nan")
    if reference.binned and current.binned and np.array_equal(reference.edges, current.edges):
        return _wasserstein_binned(reference, current, crossings)
    return _wasserstein_sketched(reference, current)


def _segments(reference: Sketched, current: Sketched, extra=()):
    """Segments [x, x + dx) on which both sketch CDFs are constant, with those CDFs and the
    bands the true CDFs lie in."""
    rv, rc = reference.view
    cv, cc = current.view
    points = np.union1d(np.union1d(rv, cv), [reference.min, reference.max, current.min, current.max, *extra])
    dx = np.diff(points)
    x = points[:-1]
    f_r = np.concatenate([[0.0], rc])[np.searchsorted(rv, x, side="right")]
    f_c = np.concatenate([[0.0], cc])[np.searchsorted(cv, x, side="right")]
    lo_r, hi_r = _band(f_r, x, reference.cdf_error, reference.min, reference.max)
    lo_c, hi_c = _band(f_c, x, current.cdf_error, current.min, current.max)
    return x, dx, f_r, f_c, lo_r, hi_r, lo_c, hi_c


def _wasserstein_sketched(reference: Sketched, current: Sketched) -> tuple[float, float, float]:
    """W1 from the sketches and the exact means alone (no bin sums)."""
    x, dx, f_r, f_c, lo_r, hi_r, lo_c, hi_c = _segments(reference, current)
    shift = abs(current.mean - reference.mean)  # = |integral of (F_r - F_c) dx|, exact
    g = f_r - f_c
    estimate = shift + 2 * min(np.sum(np.maximum(g, 0) * dx), np.sum(np.maximum(-g, 0) * dx))
    forced_pos = np.sum(np.maximum(lo_r - hi_c, 0) * dx)  # g+ and g- at least
    forced_neg = np.sum(np.maximum(lo_c - hi_r, 0) * dx)
    allowed_pos = np.sum(np.maximum(hi_r - lo_c, 0) * dx)  # g+ and g- at most
    allowed_neg = np.sum(np.maximum(hi_c - lo_r, 0) * dx)
    low = max(shift + 2 * min(forced_pos, forced_neg), forced_pos + forced_neg)
    high = min(shift + 2 * min(allowed_pos, allowed_neg),
               float(np.sum(np.maximum(hi_r - lo_c, hi_c - lo_r).clip(min=0) * dx)))
    high = max(high, low)  # float rounding only
    return float(min(max(estimate, low), high)), float(low), float(high)


SUM_TOLERANCE = 1e-5  # relative: bin sums are float64 totals of float32 block sums (see the accumulator)


def _tail_cuts(reference: Sketched, current: Sketched) -> tuple[np.ndarray, float, float]:
    """Cut points where both CDFs are exact, from both sides' kept extremes: every kept value at
    or above t (the higher of the two sides' smallest kept top value: above it each side keeps
    all its values) and at or below b (likewise at the bottom); with t and b. Empty, +inf and
    -inf without extremes."""
    if not (reference.has_extremes and current.has_extremes):
        return np.empty(0), math.inf, -math.inf
    t = max(reference.top[0], current.top[0])
    b = min(reference.bottom[-1], current.bottom[-1])
    cuts = [reference.top[reference.top >= t], current.top[current.top >= t],
            reference.bottom[reference.bottom <= b], current.bottom[current.bottom <= b], [t, b]]
    return np.concatenate(cuts), t, b


def _cdf_at_cuts(side: Sketched, coarse: np.ndarray, cuts: np.ndarray, t: float, b: float):
    """At each cut x (coarse bounds, and tail cuts at or beyond t or b): Phi(x), the integral of
    F from the lowest bound to x; F's least value on [x, next cut) (or a lower bound of it); and
    F's greatest value on [previous cut, x) (or an upper bound). Exact from the bin counts and
    sums at the coarse bounds, and from the kept extremes in the tails."""
    counts = np.asarray(side.counts, dtype=np.float64)
    sums = np.asarray(side.sums, dtype=np.float64)
    n = counts.sum()
    a_, b_ = coarse[:-1], coarse[1:]
    before = np.concatenate([[0.0], np.cumsum(counts)]) / n  # F just below each coarse bound
    before[-1] = 1.0
    # Over bin [a, b): integral of F = F(a-) (b - a) + sum (b - v) / n.
    phi_coarse = np.concatenate([[0.0], np.cumsum(before[:-1] * (b_ - a_) + np.maximum(counts * b_ - sums, 0.0) / n)])
    j = np.clip(np.searchsorted(coarse, cuts), 0, coarse.size - 1)
    phi, low, high = phi_coarse[j].copy(), before[j].copy(), before[j].copy()
    if side.has_extremes:
        top, bottom = side.top, side.bottom
        upper = cuts >= t  # 1 - F(x) = #(v > x) / n; the integral of F above x = (highest - x) - sum (v - x) / n
        if upper.any():
            x = cuts[upper]
            suffix = np.concatenate([np.cumsum(top[::-1])[::-1], [0.0]])
            k = np.searchsorted(top, x, side="right")
            above = top.size - k
            phi[upper] = phi_coarse[-1] - (coarse[-1] - x) + (suffix[k] - above * x) / n
            low[upper] = high[upper] = 1.0 - above / n
        lower = (cuts <= b) & ~upper  # F(x-) = #(v < x) / n; the integral of F below x = sum (x - v) / n
        if lower.any():
            x = cuts[lower]
            prefix = np.concatenate([[0.0], np.cumsum(bottom)])
            k = np.searchsorted(bottom, x, side="left")
            phi[lower] = (k * x - prefix[k]) / n
            low[lower] = high[lower] = k / n
    return phi, low, high


def _wasserstein_binned(reference: Sketched, current: Sketched, crossings: bool = True) -> tuple[float, float, float]:
    """W1 = sum over cells of the integral of |g|, g = F_r - F_c. The cells are the profile's bins,
    cut finer in the tails at the values both sides keep exactly. Per cell the integral of g is
    exact (from the exact counts and sums, and the kept extremes), so |integral of g| is a lower
    bound that is W1's part there whenever g keeps one sign in the cell (always, between two kept
    tail values); the sketches' bands add what they force beyond it (crossings they resolve) and
    bound what they allow."""
    edges = np.asarray(reference.edges, dtype=np.float64)
    lowest = min(reference.min, current.min, edges[0] if edges.size else np.inf)
    highest = max(reference.max, current.max, edges[-1] if edges.size else -np.inf)
    coarse = np.concatenate([[lowest], edges, [highest]])
    tails, t, b = _tail_cuts(reference, current)
    bounds = np.unique(np.concatenate([coarse, np.clip(tails, lowest, highest)]))
    width = np.diff(bounds)
    phi_r, low_r, high_r = _cdf_at_cuts(reference, coarse, bounds, t, b)
    phi_c, low_c, high_c = _cdf_at_cuts(current, coarse, bounds, t, b)
    int_r, int_c = np.diff(phi_r), np.diff(phi_c)
    exact = int_r - int_c  # integral of g over each cell
    ra, ca, rb, cb = low_r[:-1], low_c[:-1], high_r[1:], high_c[1:]
    rj, cj = np.maximum(int_r - ra * width, 0.0), np.maximum(int_c - ca * width, 0.0)
    rk, ck = np.maximum(rb * width - int_r, 0.0), np.maximum(cb * width - int_c, 0.0)
    # A bin sum is off by at most SUM_TOLERANCE of the sum of its values' distances from the
    # accumulator's pivot (the middle edge): at most the bin's farthest end from it, per value. A
    # cell's integral may take the errors of several bins' sums (the tail formulas start from the
    # total): each cell is given all of them, except cells between kept values, which are exact.
    pivot = edges[edges.size // 2] if edges.size else 0.0
    reach = np.maximum(np.abs(coarse[:-1] - pivot), np.abs(coarse[1:] - pivot))
    shares = lambda side: np.asarray(side.counts, dtype=np.float64) / np.sum(side.counts)  # noqa: E731
    slack = np.full(width.size, SUM_TOLERANCE * float(np.sum(reach * (shares(reference) + shares(current)))))
    slack[(bounds[:-1] >= t) | (bounds[1:] <= b)] = 0.0
    # Without the sketches: |g| <= |g(a)| + (F_r - F_r(a)) + (F_c - F_c(a)), and from the right end.
    data_high = np.minimum(np.abs(ra - ca) * width + rj + cj, np.abs(rb - cb) * width + rk + ck)

    x, dx, f_r, f_c, lo_r, hi_r, lo_c, hi_c = _segments(reference, current, bounds)
    bin_of = np.clip(np.searchsorted(bounds, x, side="right") - 1, 0, width.size - 1)
    per_bin = lambda v: np.bincount(bin_of, weights=v * dx, minlength=width.size)  # noqa: E731
    forced_pos, forced_neg = per_bin(np.maximum(lo_r - hi_c, 0)), per_bin(np.maximum(lo_c - hi_r, 0))
    allowed_pos, allowed_neg = per_bin(np.maximum(hi_r - lo_c, 0)), per_bin(np.maximum(hi_c - lo_r, 0))
    net = np.maximum(np.abs(exact) - slack, 0.0)
    low = np.maximum(net + 2 * np.minimum(forced_pos, forced_neg), forced_pos + forced_neg)
    high = np.minimum(np.abs(exact) + slack + 2 * np.minimum(allowed_pos, allowed_neg),
                      np.minimum(data_high + slack, per_bin(np.maximum(hi_r - lo_c, hi_c - lo_r).clip(min=0))))
    high = np.maximum(high, low)
    inexact = np.flatnonzero(slack > 0) if crossings else np.empty(0, dtype=np.int64)
    expected = np.abs(exact)
    expected[inexact] = _expected_abs_integral(reference, current, bounds, inexact, ra - ca, rb - cb, exact,
                                               rb - ra, cb - ca)
    estimate = np.clip(expected, low, high)
    return float(np.sum(estimate)), float(np.sum(low)), float(np.sum(high))


CROSSING_GRID = 24  # points per cell at which the within-cell model of g is evaluated


def _expected_abs_integral(reference: Sketched, current: Sketched, bounds, cells, g_start, g_end, integral,
                           mass_r, mass_c) -> np.ndarray:
    """E[integral of |g|] over each of `cells`, for g modelled inside the cell as the difference of
    two empirical CDFs: a Gaussian process with independent increments, variance dp_r / n_r +
    dp_c / n_c over reference mass dp_r (placed by the reference's sketch) and window mass dp_c
    (the cell's, placed alike), conditioned on what is exact: g at both ends of the cell and its
    integral over it. Where g keeps clear of 0 this is |integral of g|; where the data leave its
    sign open inside the cell (noise between two samples), it adds the expected part of the
    crossings, which |integral of g| misses."""
    cells = np.asarray(cells, dtype=np.int64)
    if cells.size == 0:
        return np.empty(0)
    rv, rc = reference.view
    n_r, n_c = float(np.sum(reference.counts)), float(np.sum(current.counts))
    steps = CROSSING_GRID
    a, b = bounds[cells], bounds[cells + 1]
    # Grid points at equal reference mass inside each cell, by the sketch's step CDF and its inverse
    # (a discrete feature's atoms stay atoms); equal widths where the reference has no mass there.
    cdf = np.concatenate([[0.0], rc])
    lo_u, hi_u = cdf[np.searchsorted(rv, a, side="left")], cdf[np.searchsorted(rv, b, side="left")]
    massive = hi_u - lo_u > 1e-12
    frac = np.linspace(0.0, 1.0, steps + 1)
    u = lo_u[:, None] + (hi_u - lo_u)[:, None] * frac
    x = rv[np.clip(np.searchsorted(rc, u, side="left"), 0, rv.size - 1)]
    x = np.where(massive[:, None], x, a[:, None] + (b - a)[:, None] * frac)
    x = np.maximum.accumulate(np.clip(x, a[:, None], b[:, None]), axis=1)
    x[:, 0], x[:, -1] = a, b
    dx = np.diff(x, axis=1)
    share = np.where(massive[:, None], 1.0 / steps, dx / np.maximum(b - a, 1e-300)[:, None])
    var = share * (np.maximum(mass_r[cells], 0.0) / n_r + np.maximum(mass_c[cells], 0.0) / n_c)[:, None]
    var = np.maximum(var, 1e-300)
    # g_j = g_start + (L z)_j over the grid, z ~ N(0, diag(var)), L lower-triangular ones; the
    # constraints: sum z = g_end - g_start, and the trapezoid integral of g = the exact integral.
    lower = np.tril(np.ones((steps, steps)))
    w = np.zeros((cells.size, steps + 1))
    w[:, :-1] += dx / 2
    w[:, 1:] += dx / 2
    A = np.stack([np.ones((cells.size, steps)), w[:, 1:] @ lower], axis=1)  # [C, 2, steps]
    c = np.stack([g_end[cells] - g_start[cells], integral[cells] - g_start[cells] * w.sum(axis=1)], axis=1)
    DA = var[:, :, None] * A.transpose(0, 2, 1)  # [C, steps, 2]
    K = DA @ np.linalg.pinv(A @ DA)
    mu = (K @ c[:, :, None])[:, :, 0]
    cov = var[:, :, None] * np.eye(steps) - K @ DA.transpose(0, 2, 1)
    mean = g_start[cells][:, None] + np.concatenate([np.zeros((cells.size, 1)), mu @ lower.T], axis=1)
    spread = np.einsum("ij,cjk,ik->ci", lower, cov, lower)
    sd = np.sqrt(np.maximum(np.concatenate([np.zeros((cells.size, 1)), spread], axis=1), 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.clip(mean / sd, -40.0, 40.0)  # beyond, |g| keeps its sign: E|g| = |mean|
        e_abs = np.where(sd > 0, mean * (1 - 2 * _scipy_stats.norm.cdf(-t)) + 2 * sd * _scipy_stats.norm.pdf(t),
                         np.abs(mean))
    expected = np.sum((e_abs[:, :-1] + e_abs[:, 1:]) / 2 * dx, axis=1)
    return np.maximum(np.nan_to_num(expected, nan=0.0), np.abs(integral[cells]))


def _band(f: np.ndarray, x: np.ndarray, error: float, lowest: float, highest: float):
    """Where the true CDF lies at x, given the sketch's CDF f and its error."""
    lo = np.clip(f - error, 0.0, 1.0)
    hi = np.clip(f + error, 0.0, 1.0)
    below, above = x < lowest, x >= highest
    lo[below] = hi[below] = 0.0
    lo[above] = hi[above] = 1.0
    return lo, hi
