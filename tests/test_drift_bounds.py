"""Every drift statistic against its exact value from all rows (scipy, numpy), on heavy-tailed,
skewed, discrete, zero-inflated, bimodal and NaN-heavy features, several seeds and shifts, with
the window's quantile sketch fed a random sample as the monitor feeds it: each statistic within
the error bound it states (see loopserve/monitor/statistics.py)."""

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from scipy import stats
from scipy.spatial.distance import jensenshannon

from loopserve import _core
from loopserve.datasets.families import FAMILIES, draw
from loopserve.monitor import statistics as st
from loopserve.monitor.profile import build_profile

REFERENCE_ROWS, WINDOW_ROWS, SAMPLE_EVERY = 40_000, 16_000, 4  # the window's sketch sees ~4,000 rows


def window_statistics(reference: np.ndarray, window: np.ndarray, every: int):
    """The monitor's statistics of one numeric feature: profile, native accumulator, sketches."""
    feature = build_profile(reference[:, None], ["x"]).features[0]
    acc = _core.TensorAccumulator([(0, feature.edges)], [], kll_every=every, exact_values=0)
    acc.update(np.ascontiguousarray(window[:, None]))
    return feature, acc, st.Sketched.of_profile(feature), st.Sketched.of_window(acc, 0)


def exact_reference_values(reference, window, edges):
    """PSI, JS, KS and W1 from all rows, by numpy and scipy, with no loopserve code."""
    r, c = reference[np.isfinite(reference)], window[np.isfinite(window)]
    bins = np.concatenate([[-np.inf], edges, [np.inf]])
    r_counts = np.array([np.count_nonzero((r >= lo) & (r < hi)) for lo, hi in zip(bins[:-1], bins[1:])])
    c_counts = np.array([np.count_nonzero((c >= lo) & (c < hi)) for lo, hi in zip(bins[:-1], bins[1:])])
    r_share = (r_counts + 0.5) / (r_counts.sum() + 0.5 * r_counts.size)
    c_share = (c_counts + 0.5) / (c_counts.sum() + 0.5 * c_counts.size)
    # PSI is the symmetrised Kullback-Leibler divergence: KL(c || r) + KL(r || c).
    psi = stats.entropy(c_share, r_share) + stats.entropy(r_share, c_share)
    js = jensenshannon(r_counts / r_counts.sum(), c_counts / c_counts.sum(), base=2)
    return (r_counts, c_counts, psi, js, stats.ks_2samp(r, c).statistic, stats.wasserstein_distance(r, c))


def check_every_statistic(reference, window, every):
    feature, acc, ref, cur = window_statistics(reference, window, every)
    r_counts, c_counts, psi, js, ks_exact, w_exact = exact_reference_values(reference, window, feature.edges)
    counts = acc.bin_counts(0)
    assert counts.tolist() == c_counts.tolist() and feature.counts == r_counts.tolist()
    c = window[np.isfinite(window)]
    c_sums = np.bincount(np.searchsorted(feature.edges, c, side="right"), weights=c, minlength=counts.size)
    # Within the tolerance the Wasserstein bounds allow for (relative to the values' distances from the pivot).
    reach = np.abs(c - feature.edges[len(feature.edges) // 2]).sum()
    assert np.abs(acc.bin_sums(0) - c_sums).sum() <= st.SUM_TOLERANCE * reach + 1e-9
    assert st.psi(feature.counts, counts) == pytest.approx(psi, rel=1e-9, abs=1e-12)
    assert st.js_distance(feature.counts, counts) == pytest.approx(js, rel=1e-9, abs=1e-12)

    if cur.sketch.count == 0:  # the sample took no row: no sketch statistic, rather than a wrong one
        assert np.isnan(st.ks_distance(ref.sketch, cur.sketch)) and np.isnan(st.wasserstein_bounds(ref, cur)[0])
        return None
    ks = st.ks_distance(ref.sketch, cur.sketch)
    margin = st.ks_margin(ref.sketch, cur.sketch, cur.rows)
    assert abs(ks - ks_exact) <= margin
    assert st.ks_at_edges(feature.counts, counts) <= ks_exact + 1e-12, "the edges give a lower bound"

    w, low, high = st.wasserstein_bounds(ref, cur)
    assert low <= w <= high
    assert low * (1 - 1e-9) <= w_exact <= high * (1 + 1e-9) + 1e-12
    return {"ks_error": abs(ks - ks_exact), "ks_margin": margin, "w_error": abs(w - w_exact) / w_exact,
            "w_width": (high - low) / w_exact}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shift", [0.0, 0.05, 0.3])
def test_every_statistic_within_its_bound_against_the_exact_value(family, shift):
    for seed in range(3):
        rng = np.random.default_rng([seed, FAMILIES.index(family), int(shift * 100)])
        reference = draw(rng, family, REFERENCE_ROWS, 0.0)
        window = draw(rng, family, WINDOW_ROWS, shift)
        check_every_statistic(reference, window, SAMPLE_EVERY)


def test_a_window_fed_whole_has_no_sampling_error_and_a_sample_has_its_dkw_bound():
    rng = np.random.default_rng(1)
    reference, window = rng.standard_normal(20_000), rng.standard_normal(8_000)
    _, _, ref, whole = window_statistics(reference, window, every=1)
    _, _, _, sampled = window_statistics(reference, window, every=8)
    assert whole.sketch.count == 8_000 and whole.sampling_error == 0.0
    assert 800 < sampled.sketch.count < 1_200, "each row with probability 1/8"
    assert sampled.sampling_error == pytest.approx(np.sqrt(np.log(200) / (2 * sampled.sketch.count)))
    assert st.ks_margin(ref.sketch, sampled.sketch, sampled.rows) > st.ks_margin(ref.sketch, whole.sketch, whole.rows)


def test_the_sample_is_random_so_traffic_with_a_period_does_not_bias_it():
    # Every 4th row is 10: a sample of every 4th row would see only 10s, or none.
    window = np.zeros(40_000)
    window[::4] = 10.0
    _, _, _, cur = window_statistics(np.arange(100.0), window, every=4)
    share = cur.sketch.rank(5.0)  # the sample's share of zeros
    assert abs(share - 0.75) <= cur.cdf_error


def test_the_p_value_is_uniform_under_no_drift_so_the_false_alarm_rate_holds():
    # A p-value that is too small under the null would alarm more often than alpha says.
    rng = np.random.default_rng(5)
    reference = rng.standard_normal(40_000)
    feature = build_profile(reference[:, None], ["x"]).features[0]
    pvalues = []
    for _ in range(40):
        acc = _core.TensorAccumulator([(0, feature.edges)], [], kll_every=4, exact_values=0)
        acc.update(rng.standard_normal((8_000, 1)))
        pvalues.append(st.ks_pvalue(feature.kll(), acc.quantiles(0)))
    pvalues = np.array(pvalues)
    assert np.mean(pvalues < 0.1) <= 0.1 + 0.15, "at most about 10% below 0.1 (40 draws)"
    shifted = _core.TensorAccumulator([(0, feature.edges)], [], kll_every=4, exact_values=0)
    shifted.update(rng.standard_normal((8_000, 1)) + 0.3)
    assert st.ks_pvalue(feature.kll(), shifted.quantiles(0)) < 1e-6


@settings(max_examples=25, deadline=None, derandomize=True)
@given(family=hs.sampled_from(FAMILIES), shift=hs.floats(0.0, 1.0), rows=hs.integers(200, 12_000),
       every=hs.sampled_from([1, 2, 5, 20]), seed=hs.integers(0, 2**32 - 1))
def test_property_bounds_hold_for_random_distributions_and_window_sizes(family, shift, rows, every, seed):
    rng = np.random.default_rng(seed)
    reference = draw(rng, family, 10_000, 0.0)
    window = draw(rng, family, rows, shift)
    if np.count_nonzero(np.isfinite(window)) == 0:
        return
    check_every_statistic(reference, window, every)


@pytest.mark.parametrize("family", ["normal", "lognormal", "pareto", "poisson", "zero_inflated", "mixture", "nan_heavy"])
def test_wasserstein_is_within_2_percent_where_a_shift_keeps_the_cdfs_apart(family):
    """With exact bin sums W1 is exact wherever F_ref - F_win keeps one sign inside each cell,
    and with the exact extremes the tails are cut into cells between kept values: a clear shift
    of light- or heavy-tailed, discrete, zero-inflated, bimodal or NaN-heavy data."""
    for seed in range(2):
        rng = np.random.default_rng([seed, FAMILIES.index(family), 7])
        reference, window = draw(rng, family, REFERENCE_ROWS, 0.0), draw(rng, family, WINDOW_ROWS, 0.3)
        _, _, ref, cur = window_statistics(reference, window, SAMPLE_EVERY)
        exact = stats.wasserstein_distance(reference[np.isfinite(reference)], window[np.isfinite(window)])
        assert st.wasserstein_bounds(ref, cur)[0] == pytest.approx(exact, rel=0.02)


def test_a_profile_without_bin_sums_falls_back_to_the_sketches_and_its_bounds_hold():
    rng = np.random.default_rng(3)
    reference, window = draw(rng, "lognormal", REFERENCE_ROWS, 0.0), draw(rng, "lognormal", WINDOW_ROWS, 0.3)
    feature, acc, ref, cur = window_statistics(reference, window, SAMPLE_EVERY)
    old = build_profile(reference[:, None], ["x"]).features[0]
    old.sums = []  # as a profile written before sums were kept reads
    legacy = st.Sketched.of_profile(old)
    assert not legacy.binned and ref.binned
    w, low, high = st.wasserstein_bounds(legacy, cur)
    exact = stats.wasserstein_distance(reference, window)
    assert low <= w <= high and low * (1 - 1e-9) <= exact <= high * (1 + 1e-9)


def test_the_accumulator_keeps_the_exact_extremes_across_batches_and_merges():
    """The k smallest and largest values, exactly, however the rows are split and merged; values
    that are not finite are passed over. Above the smallest kept top value every value is kept,
    which is what makes Wasserstein-1 exact in the tails."""
    rng = np.random.default_rng(4)
    x = draw(rng, "pareto", 30_000, 0.0)
    x[::97] = np.nan
    x[::101] = np.inf
    feature = build_profile(x[:, None], ["x"]).features[0]
    finite = np.sort(x[np.isfinite(x)])
    assert feature.top == finite[-len(feature.top):].tolist() and feature.bottom == finite[:len(feature.bottom)].tolist()
    parts = [_core.TensorAccumulator([(0, feature.edges)], [], kll_every=4, exact_values=0) for _ in range(3)]
    for part, rows in zip(parts, np.array_split(x.astype(np.float32), 3)):
        for batch in np.array_split(rows, 7):
            part.update(np.ascontiguousarray(batch[:, None]))
    parts[0].merge(parts[1])
    parts[0].merge(parts[2])
    k = parts[0].extremes_k
    exact = np.sort(x.astype(np.float32)[np.isfinite(x)].astype(np.float64))
    bottom, top = parts[0].extremes(0)
    assert top.tolist() == exact[-k:].tolist() and bottom.tolist() == exact[:k].tolist()
    again = _core.TensorAccumulator.deserialize(parts[0].serialize())
    assert [e.tolist() for e in again.extremes(0)] == [bottom.tolist(), top.tolist()]
    # Merged with a smaller k, the smaller k is kept (the other side may have dropped values).
    small = _core.TensorAccumulator([(0, feature.edges)], [], extremes_k=4)
    small.update(np.ascontiguousarray(x.astype(np.float32)[:, None]))
    again.merge(small)
    assert again.extremes(0)[1].tolist() == np.sort(np.concatenate([exact, exact]))[-4:].tolist()


def test_a_payload_holding_what_no_update_makes_is_refused():
    """Payloads come from other replicas (the fleet's merge): a NaN among the kept values would
    break the selection's ordering, a NaN maximum W1's outer bin, so each is refused."""
    x = np.random.default_rng(8).standard_normal(5_000)
    x[123] = 987_654.321  # the largest value: a kept top extreme, found by its bytes
    acc = _core.TensorAccumulator([(0, [0.0, 1.0])], [], extremes_k=16, exact_values=0)
    acc.update(np.ascontiguousarray(x[:, None]))
    payload = acc.serialize()
    def corrupt(at):
        return payload[:at] + struct.pack("<d", np.nan) + payload[at + 8:]

    where = [i for i in range(len(payload)) if payload.startswith(struct.pack("<d", 987_654.321), i)]
    assert len(where) == 4  # the moments' max, the KLL sketch's max and item, the top extreme (last)
    with pytest.raises(ValueError, match="Extremes: a kept value is not finite"):
        _core.TensorAccumulator.deserialize(corrupt(where[-1]))
    with pytest.raises(ValueError, match="MomentsSketch: corrupt moments"):
        _core.TensorAccumulator.deserialize(corrupt(where[0]))
    for at in where[1:-1]:
        with pytest.raises(ValueError, match="KllSketch"):
            _core.TensorAccumulator.deserialize(corrupt(at))


@pytest.mark.parametrize("offset", [1e9, 1e13])
def test_wasserstein_bounds_hold_for_a_feature_far_from_zero(offset):
    """Timestamps and ids sit far from 0 next to their spread: the bin sums are taken from the
    middle edge (in the profile as in the accumulators) and the bound counts their rounding."""
    rng = np.random.default_rng(9)
    for _ in range(3):
        reference = offset + rng.standard_normal(20_000)
        window = offset + rng.standard_normal(5_000) + 0.3
        _, _, ref, cur = window_statistics(reference, window, 1)
        exact = stats.wasserstein_distance(reference, window)
        w, low, high = st.wasserstein_bounds(ref, cur)
        assert low <= w <= high and low * (1 - 1e-9) <= exact <= high * (1 + 1e-9), (exact, w, low, high)


def test_a_profile_without_extremes_still_bounds_wasserstein():
    rng = np.random.default_rng(6)
    reference, window = draw(rng, "pareto", REFERENCE_ROWS, 0.0), draw(rng, "pareto", WINDOW_ROWS, 0.3)
    feature, acc, ref, cur = window_statistics(reference, window, SAMPLE_EVERY)
    old = build_profile(reference[:, None], ["x"]).features[0]
    old.top, old.bottom = [], []  # as a profile written before extremes were kept reads
    legacy = st.Sketched.of_profile(old)
    assert ref.has_extremes and not legacy.has_extremes
    exact = stats.wasserstein_distance(reference, window)
    for side in (ref, legacy):
        w, low, high = st.wasserstein_bounds(side, cur)
        assert low <= w <= high and low * (1 - 1e-9) <= exact <= high * (1 + 1e-9)
    assert abs(st.wasserstein_bounds(ref, cur)[0] - exact) <= abs(st.wasserstein_bounds(legacy, cur)[0] - exact) + 1e-9 * exact


def test_the_within_cell_model_brings_noise_windows_closer_than_the_cells_alone():
    """Where F_ref - F_win crosses 0 inside cells (no shift: noise between two samples),
    |integral of g| per cell misses the crossings; the model's expected part brings them back."""
    errors = {True: [], False: []}
    for seed in range(6):
        rng = np.random.default_rng([seed, 11])
        reference, window = rng.standard_normal(REFERENCE_ROWS), rng.standard_normal(WINDOW_ROWS)
        _, _, ref, cur = window_statistics(reference, window, SAMPLE_EVERY)
        exact = stats.wasserstein_distance(reference, window)
        for crossings in (True, False):
            w, low, high = st.wasserstein_bounds(ref, cur, crossings=crossings)
            assert low <= w <= high
            errors[crossings].append(abs(w - exact) / exact)
    assert np.mean(errors[True]) < 0.5 * np.mean(errors[False])


def test_a_profile_file_from_before_the_extremes_loads_and_falls_back(tmp_path):
    import json

    rng = np.random.default_rng(8)
    reference = draw(rng, "lognormal", 5_000, 0.0)
    path = build_profile(reference[:, None], ["x"]).save(tmp_path)
    saved = json.loads(path.read_text())
    for feature in saved["features"]:
        del feature["top"], feature["bottom"]
    path.write_text(json.dumps(saved))
    from loopserve.monitor.profile import ReferenceProfile

    feature = ReferenceProfile.load(tmp_path).features[0]
    assert feature.top == [] and not st.Sketched.of_profile(feature).has_extremes
    acc = _core.TensorAccumulator([(0, feature.edges)], [], kll_every=2, exact_values=0)
    window = draw(rng, "lognormal", 4_000, 0.3)
    acc.update(np.ascontiguousarray(window[:, None]))
    w, low, high = st.wasserstein_bounds(st.Sketched.of_profile(feature), st.Sketched.of_window(acc, 0))
    assert low * (1 - 1e-9) <= stats.wasserstein_distance(reference, window) <= high * (1 + 1e-9)


def _without_extremes(payload: bytes) -> bytes:
    """An accumulator payload as the format before extremes (1) wrote it: the same fields, with
    no extremes blob after each numeric feature's quantile sketch."""
    import struct

    out, at = bytearray(payload[:1 + 8 + 4 + 2]), 1 + 8 + 4 + 2
    out[0] = 1
    numeric = struct.unpack_from("<I", payload, at)[0]
    out += payload[at:at + 4]
    at += 4
    for _ in range(numeric):
        start = at
        at += 8  # the column
        for _ in range(3):  # histogram, moments, quantiles
            at += 8 + struct.unpack_from("<Q", payload, at)[0]
        out += payload[start:at]
        at += 8 + struct.unpack_from("<Q", payload, at)[0]  # the extremes, dropped
        at += 8 + struct.unpack_from("<Q", payload, at)[0]  # the exact values, dropped
    return bytes(out + payload[at:])


def test_a_window_payload_from_before_the_extremes_loads_and_falls_back():
    rng = np.random.default_rng(9)
    reference, window = draw(rng, "pareto", REFERENCE_ROWS, 0.0), draw(rng, "pareto", WINDOW_ROWS, 0.05)
    feature, acc, ref, cur = window_statistics(reference, window, SAMPLE_EVERY)
    old = _core.TensorAccumulator.deserialize(_without_extremes(acc.serialize()))
    assert old.extremes(0) is None and old.bin_counts(0).tolist() == acc.bin_counts(0).tolist()
    merged = _core.TensorAccumulator.deserialize(acc.serialize())
    merged.merge(old)
    assert merged.extremes(0) is None, "a merge with an old payload no longer knows its extremes"
    legacy = st.Sketched.of_window(old, 0)
    assert not legacy.has_extremes
    w, low, high = st.wasserstein_bounds(ref, legacy)
    exact = stats.wasserstein_distance(reference, window)
    assert low <= w <= high and low * (1 - 1e-9) <= exact <= high * (1 + 1e-9)
