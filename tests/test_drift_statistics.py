"""Drift statistics against scipy and numpy, on generated data."""

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from loopserve._core import KllSketch
from loopserve.monitor import statistics as st


def binned(rng, shift=0.0, n=20_000, bins=10):
    edges = np.quantile(rng.standard_normal(50_000), np.linspace(0, 1, bins + 1)[1:-1])
    ref = np.bincount(np.searchsorted(edges, rng.standard_normal(n)), minlength=bins)
    cur = np.bincount(np.searchsorted(edges, rng.standard_normal(n) + shift), minlength=bins)
    return ref, cur


@pytest.mark.parametrize("shift", [0.0, 0.1, 0.5, 2.0])
def test_psi_and_js_equal_the_exact_values_over_the_same_bins(shift):
    ref, cur = binned(np.random.default_rng(1), shift)
    r = (ref + 0.5) / (ref.sum() + 0.5 * ref.size)
    c = (cur + 0.5) / (cur.sum() + 0.5 * cur.size)
    # An independent definition: PSI is the symmetrised Kullback-Leibler divergence.
    assert st.psi(ref, cur) == pytest.approx(stats.entropy(c, r) + stats.entropy(r, c), rel=1e-9, abs=1e-15)
    assert st.js_distance(ref, cur) == pytest.approx(jensenshannon(ref / ref.sum(), cur / cur.sum(), base=2),
                                                     rel=1e-9, abs=1e-15)
    if shift >= 0.5:
        assert st.psi(ref, cur) > 0.1


def test_psi_stays_finite_with_empty_bins():
    assert np.isfinite(st.psi([100, 0, 50], [0, 80, 70]))
    with pytest.raises(ValueError, match="same bins"):
        st.psi([1, 2], [1, 2, 3])


def test_chi_square_matches_scipy():
    ref = np.array([500, 300, 150, 50])
    cur = np.array([480, 310, 170, 40])
    expected = (ref + 0.5) / (ref.sum() + 2.0) * cur.sum()
    statistic, p = st.chi_square(ref, cur)
    want = stats.chisquare(cur, expected)
    assert statistic == pytest.approx(want.statistic, rel=1e-12) and p == pytest.approx(want.pvalue, rel=1e-9)


def sketched(values) -> st.Sketched:
    sketch = KllSketch(400)  # the drift sketches' k
    sketch.update(values)
    return st.Sketched(sketch, values.size, values.mean(), values.min(), values.max())


@pytest.mark.parametrize("shift", [0.0, 0.05, 0.3])
def test_ks_and_wasserstein_from_sketches_against_scipy_within_their_stated_bounds(shift):
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal(100_000), rng.standard_normal(100_000) + shift
    ra, rb = sketched(a), sketched(b)
    exact_ks = stats.ks_2samp(a, b).statistic
    assert abs(st.ks_distance(ra.sketch, rb.sketch) - exact_ks) <= st.ks_margin(ra.sketch, rb.sketch, b.size)
    exact_w = stats.wasserstein_distance(a, b)
    w, low, high = st.wasserstein_bounds(ra, rb)
    assert low <= exact_w <= high
    assert low >= abs(b.mean() - a.mean()) * (1 - 1e-12)
    if shift == 0.3:  # a shift well over the sketches' error: within 2% of exact
        assert w == pytest.approx(exact_w, rel=0.02)
        assert st.ks_pvalue(ra.sketch, rb.sketch) < 1e-6


@pytest.mark.parametrize("shift", [0.0, 0.2])
def test_two_sample_chi_square_is_pearsons_on_the_two_row_table(shift):
    ref, cur = binned(np.random.default_rng(3), shift, n=5_000)
    cur[2] = 0  # an empty bin in one sample only
    statistic, p, df = st.chi_square_two_sample(ref, cur)
    want = stats.chi2_contingency(np.vstack([ref, cur]), correction=False)
    assert statistic == pytest.approx(want.statistic, rel=1e-9)
    assert p == pytest.approx(want.pvalue, rel=1e-6, abs=1e-300) and df == want.dof
