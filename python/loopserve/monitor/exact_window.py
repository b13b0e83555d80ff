"""KS and Wasserstein-1 of a window whose values are all kept (the accumulators keep every value
of a window up to `drift.exact_values` rows) against the reference profile's quantile grid.

The window's CDF F_c is then exact. The reference's F_r is known exactly at its knots: the
profile's grid (loopserve.monitor.profile.reference_grid: order statistics at GRID_CELLS + 1
evenly spaced ranks, the values next to them, and both sides of each cell's widest gap) and its
kept extremes, each with the exact counts of reference values below it and at or below it.
Between two consecutive knots F_r is taken as linear, from F_r(knot) to F_r(next knot -); it is
exact where no reference value lies strictly between them (everywhere in the kept tails, across
gaps, and wherever ties fill a cell: discrete data), and elsewhere the true F_r lies in the
cell's band [F_r(knot), F_r(next knot -)], of height at most 1 / GRID_CELLS.

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
    left, width = x[:-1], np.diff(x)
    f_c = np.searchsorted(values, left, side="right") / values.size  # constant on [left, left + width)

    # F_r on each interval: linear within the knot cell [k_s, k_s+1) it lies in, 0 below the
    # reference's minimum and 1 from its maximum on (cells -1 and last: slope 0, origin 0).
    start = np.concatenate([[0.0], reference.at_most[:-1] / n, [1.0]])
    rise = np.concatenate([[0.0], reference.below[1:] / n, [1.0]]) - start
    span = np.concatenate([[1.0], np.diff(k), [1.0]])
    origin = np.concatenate([[0.0], k[:-1], [0.0]])
    s = np.searchsorted(k, left, side="right")  # the cell, counted from the one below the minimum
    # Where in its cell the interval starts and ends, as fractions (not a slope: a cell of
    # subnormal width would overflow one): F_r - F_c at both ends, linear in between.
    g0 = start[s] + rise[s] * ((left - origin[s]) / span[s]) - f_c
    g1 = start[s] + rise[s] * ((x[1:] - origin[s]) / span[s]) - f_c

    a0, a1 = np.abs(g0), np.abs(g1)
    total = a0 + a1
    # The integral of |g| for g linear from g0 to g1: w (a0 + a1) / 2 when they share a sign, else
    # w (a0^2 + a1^2) / (2 (a0 + a1)): in one expression, w (a0^2 + a1^2 + 2 max(g0 g1, 0)) / (2 (a0 + a1)).
    area = np.divide(a0 * a0 + a1 * a1 + 2 * np.maximum(g0 * g1, 0.0), 2 * total, out=np.zeros_like(total),
                     where=total > 0) * width
    w1 = float(area.sum())
    ks = float(max(a0.max(initial=0.0), a1.max(initial=0.0)))

    band = (reference.below[1:] - reference.at_most[:-1]) / n  # reference mass strictly inside each cell
    ks_margin = float(band.max(initial=0.0)) + ROUNDING
    w1_margin = float(np.sum(band * np.diff(k)) / 2) + ROUNDING * w1
    return ExactComparison(ks, ks_margin, w1, max(w1 - w1_margin, 0.0), w1 + w1_margin)
