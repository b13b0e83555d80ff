"""Distribution families that stress drift statistics: heavy tails (lognormal, Student t with 2
degrees of freedom, Pareto), integer values (Poisson), zero inflation, mixtures and NaN-heavy data,
each with a `shift` that moves it (0: the reference). Shared by the statistics' bound tests
(tests/test_drift_bounds.py) and their benchmark against exact scipy (bench/drift_accuracy.py)."""

from __future__ import annotations

import numpy as np


def draw(rng, family: str, n: int, shift: float) -> np.ndarray:
    """n values of a family, moved by `shift` (0: the reference's distribution)."""
    if family == "normal":
        return rng.standard_normal(n) * (1 + shift) + shift
    if family == "lognormal":
        return rng.lognormal(shift, 1.5, n)
    if family == "student_t2":
        return rng.standard_t(2, n) + shift
    if family == "pareto":
        return (rng.pareto(1.5, n) + 1) * (1 + shift)
    if family == "poisson":
        return rng.poisson(3 * (1 + shift), n).astype(np.float64)
    if family == "zero_inflated":
        return np.where(rng.random(n) < 0.6 - shift / 2, 0.0, rng.exponential(2.0, n))
    if family == "mixture":
        return np.where(rng.random(n) < 0.3 + shift / 3, rng.normal(-2, 0.5, n), rng.normal(2, 1, n))
    if family == "nan_heavy":
        x = rng.standard_normal(n) + shift
        x[rng.random(n) < 0.5 + shift / 2] = np.nan
        return x
    raise ValueError(family)


FAMILIES = ["normal", "lognormal", "student_t2", "pareto", "poisson", "zero_inflated", "mixture", "nan_heavy"]
