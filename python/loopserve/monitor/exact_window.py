"""KS and Wasserstein-1 of a window whose values are all kept (the accumulators keep every value
of a window up to `drift.exact_values` rows) against the reference profile's quantile grid.

The window's CDF F_c is then exact. The reference's F_r is known exactly at its knots: the
profile's grid (order statistics at GRID_CELLS + 1 evenly spaced ranks) and its kept extremes,
each with the exact counts of reference values below it and at or below it. Between two
consecutive knots F_r is taken as linear, from F_r(knot) to F_r(next knot -); it is exact where
no reference value lies strictly between them (everywhere in the kept tails, and wherever ties
fill a cell: discrete data), and elsewhere the true F_r lies in the cell's band
[F_r(knot), F_r(next knot -)], of height at most 1 / GRID_CELLS.

Bounds, which hold always (no probability: nothing here is sampled):
- KS: |D - D_exact| <= the largest band height (ks_margin, at most 1 / GRID_CELLS).
- Wasserstein-1: the integral of |F_r - F_lin| over a cell of width w and band height h is at most
  h w / 2 (the worst monotone F_r is a step at one end), so |W - W_exact| <= sum h w / 2.
Both add a relative 1e-12 for rounding. A reference with at most GRID_CELLS + 1 rows has every
value a knot, and then both statistics are exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROUNDING = 1e-12


@dataclass(frozen=True)
class ReferenceCdf:
    """The reference's CDF at its knots: F(x-) = below / n, F(x) = at_most / n."""

    knots: np.ndarray    # increasing
    below: np.ndarray    # reference values < knot
    at_most: np.ndarray  # reference values <= knot
    n: int

    @classmethod
    def of_profile(cls, feature) -> "ReferenceCdf | None":
        """From a NumericProfile's grid and extremes; None for a profile made before grids."""
        if not feature.grid:
            return None
        knots = [np.asarray(feature.grid, dtype=np.float64)]
        below = [np.asarray(feature.grid_below, dtype=np.float64)]
        at_most = [np.asarray(feature.grid_at_most, dtype=np.float64)]
        n = feature.count
        bottom = np.asarray(feature.bottom, dtype=np.float64)
        top = np.asarray(feature.top, dtype=np.float64)
        if bottom.size:  # below the largest kept bottom value every value is kept: exact counts
            inner = bottom[bottom < bottom[-1]]
            knots.append(inner)
            below.append(np.searchsorted(bottom, inner, side="left").astype(np.float64))
            at_most.append(np.searchsorted(bottom, inner, side="right").astype(np.float64))
        if top.size:  # likewise above the smallest kept top value
            inner = top[top > top[0]]
            knots.append(inner)
            below.append(n - (top.size - np.searchsorted(top, inner, side="left")).astype(np.float64))
            at_most.append(n - (top.size - np.searchsorted(top, inner, side="right")).astype(np.float64))
        knots_all = np.concatenate(knots)
        knots_all, first = np.unique(knots_all, return_index=True)
        return cls(knots_all, np.concatenate(below)[first], np.concatenate(at_most)[first], n)


@dataclass(frozen=True)
class ExactComparison:
    ks: float
    ks_margin: float
    wasserstein: float
    wasserstein_low: float
    wasserstein_high: float


def compare(reference: ReferenceCdf, values: np.ndarray) -> ExactComparison:
    """KS and W1 between the reference and a window's finite values, all of them, increasing."""
    if values.size == 0 or reference.n == 0:
        nan = float("nan")
        return ExactComparison(nan, nan, nan, nan, nan)
    k, n = reference.knots, float(reference.n)
    x = np.union1d(k, values)  # every point where either CDF may bend or jump
    left, right = x[:-1], x[1:]
    width = right - left
    f_c = np.searchsorted(values, left, side="right") / values.size  # constant on [left, right)

    # The knot cell [k_j, k_j+1) each interval lies in (j = -1 below the reference's minimum,
    # j = last at and above its maximum, where F_r is 0 and 1).
    j = np.searchsorted(k, left, side="right") - 1
    inside = (j >= 0) & (j < k.size - 1)
    jj = np.clip(j, 0, k.size - 2) if k.size > 1 else np.zeros_like(j)
    start, end = reference.at_most[jj] / n, reference.below[np.minimum(jj + 1, k.size - 1)] / n
    span = k[np.minimum(jj + 1, k.size - 1)] - k[jj]
    slope = np.divide(end - start, span, out=np.zeros_like(span), where=span > 0)
    r0 = np.where(inside, start + slope * (left - k[jj]), np.where(j < 0, 0.0, 1.0))
    r1 = np.where(inside, start + slope * (right - k[jj]), np.where(j < 0, 0.0, 1.0))

    g0, g1 = r0 - f_c, r1 - f_c
    a0, a1 = np.abs(g0), np.abs(g1)
    same_sign = g0 * g1 >= 0
    total = a0 + a1
    area = np.where(same_sign, total / 2, np.divide(g0 * g0 + g1 * g1, 2 * total, out=np.zeros_like(total),
                                                     where=total > 0)) * width
    w1 = float(area.sum())
    ks = float(max(a0.max(initial=0.0), a1.max(initial=0.0)))

    band = (reference.below[1:] - reference.at_most[:-1]) / n  # reference mass strictly inside each cell
    ks_margin = float(band.max(initial=0.0)) + ROUNDING
    w1_margin = float(np.sum(band * np.diff(k)) / 2) + ROUNDING * w1
    return ExactComparison(ks, ks_margin, w1, max(w1 - w1_margin, 0.0), w1 + w1_margin)
