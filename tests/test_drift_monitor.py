"""The native drift accumulators and monitor, and the verdicts, against numpy and scipy."""

import time

import msgspec
import numpy as np
import pytest
from scipy import stats

from loopserve import _core
from loopserve.config import DriftConfig, DriftPolicy
from loopserve.monitor import statistics as st
from loopserve.monitor.monitor import DriftMonitor, merge_windows, native_spec
from loopserve.monitor.profile import ProfileError, ReferenceProfile, build_profile


def numpy_bins(values, edges):
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    return np.bincount(np.searchsorted(edges, finite, side="right"), minlength=len(edges) + 1), v.size - finite.size


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64])
def test_bin_counts_moments_and_categories_equal_numpy(dtype):
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(5000, 4)) * 10).astype(dtype)
    X[:, 3] = rng.integers(0, 30, 5000)
    if np.issubdtype(dtype, np.floating):
        X[::97, 0] = np.nan
        X[::89, 1] = np.inf
        X[::83, 1] = -np.inf
        X[::7, 2] = 1.5  # exactly on an edge
    edges = [np.array([-5.0, 0.0, 1.5, 5.0]), np.array([-1e-3, 2.0]), np.array([1.5]), None]
    lut = np.arange(20, dtype=np.int32)[::-1]  # codes 0..19 in slots 19..0; 20.. are "other"
    acc = _core.TensorAccumulator([(j, edges[j].tolist()) for j in range(3)], [(3, 20, lut.tolist())])
    acc.update(X[:1234])
    acc.update(X[1234:])  # two batches accumulate like one
    for j in range(3):
        counts, missing = numpy_bins(X[:, j], edges[j])
        assert acc.bin_counts(j).tolist() == counts.tolist()
        assert acc.numeric_missing(j) == missing
        v = X[:, j].astype(np.float64)
        v = v[np.isfinite(v)]
        m = acc.moments(j)
        assert m.count == v.size and m.min == v.min() and m.max == v.max()
        assert m.mean == pytest.approx(v.mean(), rel=1e-12) and m.variance == pytest.approx(v.var(), rel=1e-9)
    codes = X[:, 3].astype(np.int64)
    want = np.zeros(21, dtype=np.int64)
    np.add.at(want, np.where(codes < 20, lut[np.minimum(codes, 19)], 20), 1)
    assert acc.category_counts(0).tolist() == want.tolist()


def test_float32_values_next_to_an_edge_bin_as_in_double():
    edge = 0.1  # not a float32: the float32 neighbours fall on either side
    below, above = np.float32(np.nextafter(np.float32(0.1), np.float32(0))), np.float32(0.1)
    assert float(below) < edge < float(above)
    acc = _core.TensorAccumulator([(0, [edge])], [])
    acc.update(np.array([[below], [above]], dtype=np.float32))
    assert acc.bin_counts(0).tolist() == [1, 1]


def test_categorical_codes_missing_and_other():
    acc = _core.TensorAccumulator([], [(0, 2, [1, 0])])
    acc.update(np.array([[0], [1], [1], [7], [-1], [np.nan], [np.inf]], dtype=np.float32))
    assert acc.category_counts(0).tolist() == [2, 1, 1]  # slot 0 <- code 1, slot 1 <- code 0, other
    assert acc.category_missing(0) == 3


def test_serialization_is_lossless_and_merge_equals_one_stream():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(30000, 2)), rng.normal(1, 2, size=(20000, 2))
    spec = ([(0, [-1.0, 0.0, 1.0]), (1, [0.5])], [])
    # exact_values=0: the KLL sketches take every row, to be compared (test_drift_exact.py has the values)
    acc_a, acc_b, acc_ab = (_core.TensorAccumulator(*spec, exact_values=0) for _ in range(3))
    acc_a.update(a)
    acc_b.update(b)
    acc_ab.update(np.vstack([a, b]))
    blob = acc_a.serialize()
    again = _core.TensorAccumulator.deserialize(blob)
    assert again.serialize() == blob
    again.merge(acc_b)
    assert again.rows == 50000
    for j in range(2):
        assert again.bin_counts(j).tolist() == acc_ab.bin_counts(j).tolist()
        assert again.bin_sums(j) == pytest.approx(acc_ab.bin_sums(j), rel=1e-12, abs=1e-9)
        merged, whole = again.quantiles(j), acc_ab.quantiles(j)
        eps = _core.KllSketch.normalized_rank_error(merged.k)
        for x in np.quantile(np.vstack([a, b])[:, j], [0.1, 0.5, 0.9]):
            assert abs(merged.rank(x) - whole.rank(x)) <= 2 * eps
        assert again.moments(j).mean == pytest.approx(acc_ab.moments(j).mean, rel=1e-12)
    with pytest.raises(ValueError, match="truncated"):
        _core.TensorAccumulator.deserialize(blob[:-3])


@pytest.mark.parametrize("shift", [0.1, 0.3, 1.0])
def test_ks_within_the_bound_and_wasserstein_within_two_percent_of_a_clear_shift(shift):
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal(200_000), rng.standard_normal(200_000) * 1.1 + shift
    ra, rb = _core.KllSketch(400), _core.KllSketch(400)  # the drift sketches' k
    ra.update(a)
    rb.update(b)
    assert abs(st.ks_distance(ra, rb) - stats.ks_2samp(a, b).statistic) <= st.ks_margin(ra, rb, b.size)
    w, low, high = st.wasserstein_bounds(st.Sketched(ra, a.size, a.mean(), a.min(), a.max()),
                                         st.Sketched(rb, b.size, b.mean(), b.min(), b.max()))
    exact = stats.wasserstein_distance(a, b)
    assert low <= exact <= high
    assert w == pytest.approx(exact, rel=0.02)


def drifting(rng, rows, features=20, shift=0.0, column=3):
    X = rng.standard_normal((rows, features)).astype(np.float32)
    if shift:
        X[:, column] += shift
    return X


def test_a_tenth_of_a_standard_deviation_in_one_of_twenty_features_is_flagged_within_50000_rows():
    rng = np.random.default_rng(3)
    profile = build_profile(drifting(rng, 100_000))
    monitor = DriftMonitor(profile, DriftConfig(window_rows=10_000, window_seconds=0))
    for _ in range(5):
        monitor.offer(drifting(rng, 10_000, shift=0.1))
        monitor.flush()
    windows = [w for w in monitor.windows() if w.closed]
    assert len(windows) == 5
    assert any(w.drifted_features == ["f3"] for w in windows)
    assert all(set(w.drifted_features) <= {"f3"} for w in windows)
    monitor.stop()


def test_a_clear_shift_under_the_effect_floors_is_reported_as_significant_below_the_floor():
    # 200,000 rows make a 0.03-sd shift statistically clear, but its PSI (~0.001) and KS (~0.012)
    # are under the floors (0.005, 0.02): reported as such, neither "drift" nor "no drift".
    rng = np.random.default_rng(14)
    profile = build_profile(drifting(rng, 200_000, features=2))
    monitor = DriftMonitor(profile, DriftConfig(window_rows=200_000, window_seconds=0, queue_rows=200_000))
    monitor.offer(drifting(rng, 200_000, features=2, shift=0.03, column=0))
    monitor.flush()
    monitor.offer(drifting(rng, 200_000, features=2))
    monitor.flush()
    shifted, quiet = monitor.windows(include_open=False)
    assert shifted.verdict == "significant, below the floor" and shifted.drifted_features == []
    assert shifted.below_floor_features == ["f0"]
    f0 = shifted.features[0]
    assert not f0.drifted and f0.psi < 0.005 and f0.chi2_pvalue < shifted.alpha_per_test
    assert any("psi" in why and "< 0.005" in why for why in f0.below_floor)
    # KS from every value of the window: exact to the reference grid's 1/4096, significant, under its floor.
    assert f0.distribution_from == "every value" and f0.ks_low < 0.02 and f0.ks_margin < 1e-3
    assert any(why.startswith("ks ") and "< 0.02" in why for why in f0.below_floor)
    assert quiet.verdict == "no drift" and quiet.below_floor_features == []
    monitor.stop()


def test_one_hundred_windows_without_drift_raise_at_most_one_false_alarm():
    rng = np.random.default_rng(4)
    profile = build_profile(drifting(rng, 50_000), categorical=None)
    monitor = DriftMonitor(profile, DriftConfig(window_rows=2_000, window_seconds=0, history=100))
    for _ in range(20):
        monitor.offer(drifting(rng, 10_000))
        monitor.flush()
    windows = [w for w in monitor.windows(include_open=False)]
    assert len(windows) == 100
    assert sum(w.verdict == "drift" for w in windows) <= 1
    monitor.stop()


def zipf_codes(rng, n, k=1000, a=1.3):
    return np.minimum(rng.zipf(a, n) - 1, k - 1).astype(np.float32)


def test_a_high_cardinality_categorical_without_drift_stays_quiet_and_a_real_shift_alarms():
    rng = np.random.default_rng(5)
    ref = np.column_stack([rng.standard_normal(100_000), zipf_codes(rng, 100_000)]).astype(np.float32)
    profile = build_profile(ref, ["x", "merchant"], categorical=["merchant"])
    monitor = DriftMonitor(profile, DriftConfig(window_rows=5_000, window_seconds=0, history=50))
    for _ in range(20):
        monitor.offer(np.column_stack([rng.standard_normal(5_000), zipf_codes(rng, 5_000)]).astype(np.float32))
        monitor.flush()
    quiet = monitor.windows(include_open=False)
    assert sum(w.verdict == "drift" for w in quiet) <= 1
    shifted = zipf_codes(rng, 5_000)
    shifted[:500] = 17  # one merchant suddenly takes 10% of the traffic
    monitor.offer(np.column_stack([rng.standard_normal(5_000), shifted]).astype(np.float32))
    monitor.flush()
    last = monitor.windows(include_open=False)[-1]
    assert last.drifted_features == ["merchant"]
    monitor.stop()


def test_missing_rate_is_its_own_signal():
    rng = np.random.default_rng(6)
    profile = build_profile(drifting(rng, 50_000, features=2))
    monitor = DriftMonitor(profile, DriftConfig(window_rows=10_000, window_seconds=0))
    X = drifting(rng, 10_000, features=2)
    X[:500, 1] = np.nan
    monitor.offer(X)
    monitor.flush()
    w = monitor.windows(include_open=False)[-1]
    feature = w.features[1]
    assert feature.missing_rate == pytest.approx(0.05) and feature.drifted
    assert any("missing rate" in r for r in feature.reasons)
    monitor.stop()


def test_prediction_drift_from_outputs():
    rng = np.random.default_rng(7)
    X = drifting(rng, 50_000, features=3)
    profile = build_profile(X, outputs=X[:, :1] * 2, output_names=["score"])
    monitor = DriftMonitor(profile, DriftConfig(window_rows=10_000, window_seconds=0))
    X2 = drifting(rng, 10_000, features=3)
    monitor.offer(X2, X2[:, :1] * 2 + 0.5)  # the inputs did not move, the predictions did
    monitor.flush()
    w = monitor.windows(include_open=False)[-1]
    assert w.drifted_features == ["score"]
    assert [f.role for f in w.features] == ["input"] * 3 + ["output"]
    monitor.stop()


def wait_for(condition, timeout=10.0):
    """Waits until condition() holds (the monitor's own thread acts on its own clock)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_windows_close_by_rows_exactly_and_by_time():
    rng = np.random.default_rng(8)
    profile = build_profile(drifting(rng, 5_000, features=2))
    monitor = DriftMonitor(profile, DriftConfig(window_rows=1_000, window_seconds=0))
    monitor.offer(drifting(rng, 2_500, features=2))
    monitor.flush()
    assert [w["inputs"].rows for w in monitor.native.windows()] == [1000, 1000, 500]
    monitor.stop()
    opened = time.monotonic()  # before the window opens
    timed = DriftMonitor(profile, DriftConfig(window_rows=1_000_000, window_seconds=0.2))
    timed.offer(drifting(rng, 100, features=2))
    timed.flush()
    wait_for(lambda: timed.native.stats()["windows_closed"] == 1)
    assert time.monotonic() - opened >= 0.2, "closed by its time, not before"
    closed = timed.native.windows(False)
    assert len(closed) == 1 and closed[0]["inputs"].rows == 100 and closed[0]["closed"]
    timed.stop()


def test_a_batch_the_full_hand_off_cannot_take_is_skipped_and_counted():
    rng = np.random.default_rng(9)
    profile = build_profile(drifting(rng, 5_000, features=2))
    monitor = DriftMonitor(profile, DriftConfig(window_rows=10_000, window_seconds=0, queue_rows=1_000))
    monitor.offer(drifting(rng, 1_500, features=2))  # more than the hand-off holds: skipped whatever the timing
    monitor.offer(drifting(rng, 800, features=2))
    monitor.flush()
    monitor.offer(drifting(rng, 700, features=2))
    monitor.flush()
    s = monitor.native.stats()
    assert (s["rows_skipped"], s["batches_skipped"], s["rows_seen"]) == (1_500, 1, 1_500)
    assert monitor.native.windows()[-1]["inputs"].rows == 1_500
    assert monitor.report().monitor.rows_skipped == 1_500
    monitor.stop()
    monitor.offer(drifting(rng, 10, features=2))  # a stopped monitor takes nothing, and says so
    assert monitor.native.stats()["rows_skipped"] == 1_510


def test_a_monitor_that_falls_behind_skips_and_counts_every_row():
    # A burst faster than the monitor's thread: every row is either seen or counted as skipped.
    rng = np.random.default_rng(9)
    profile = build_profile(drifting(rng, 5_000, features=2))
    monitor = DriftMonitor(profile, DriftConfig(window_rows=10_000, window_seconds=0, queue_rows=1_000))
    for _ in range(50):
        monitor.offer(drifting(rng, 800, features=2))
    monitor.flush()
    s = monitor.native.stats()
    assert s["rows_seen"] + s["rows_skipped"] == 50 * 800
    assert s["rows_skipped"] == 800 * s["batches_skipped"]
    assert sum(w["inputs"].rows for w in monitor.native.windows()) == s["rows_seen"]
    monitor.stop()


def test_sketches_of_two_replicas_merge_into_one_view():
    rng = np.random.default_rng(10)
    profile = build_profile(drifting(rng, 20_000, features=2))
    replicas = [DriftMonitor(profile, DriftConfig(window_rows=100_000, window_seconds=0)) for _ in range(2)]
    one = DriftMonitor(profile, DriftConfig(window_rows=100_000, window_seconds=0))
    for r in replicas:
        X = drifting(rng, 3_000, features=2)
        r.offer(X)
        one.offer(X)
        r.flush()
    one.flush()
    payloads = [r.sketch().windows[-1] for r in replicas]
    merged = merge_windows(payloads)
    whole = one.native.windows()[-1]["inputs"]
    assert merged["inputs"].rows == 6_000
    assert merged["inputs"].bin_counts(0).tolist() == whole.bin_counts(0).tolist()


def test_bad_reference_data_gets_clear_errors_or_defined_results():
    with pytest.raises(ProfileError, match="no rows"):
        build_profile(np.zeros((0, 3)))
    with pytest.raises(ProfileError, match="no finite values"):
        build_profile(np.full((10, 1), np.nan), ["x"])
    with pytest.raises(ProfileError, match="non-integer codes"):
        build_profile(np.array([[0.5], [1.0]]), ["c"], categorical=["c"])
    with pytest.raises(ProfileError, match="not among the features"):
        build_profile(np.zeros((3, 1)), ["x"], categorical=["y"])
    constant = build_profile(np.full((100, 1), 3.0), ["x"]).features[0]
    assert constant.counts == [0, 100, 0]  # below, exactly, above
    acc = _core.TensorAccumulator(*native_spec([constant]))
    acc.update(np.array([[3.0], [2.0], [4.0]]))
    assert acc.bin_counts(0).tolist() == [1, 1, 1]
    cat = build_profile({"country": ["a", "b", "a", None]}, categorical=["country"]).features[0]
    assert cat.categories == ["a", "b"] and cat.missing == 1
    assert cat.slots_of(["b", "zz", None]).tolist() == [1, 2, -1]  # unseen -> other, None -> missing


def test_profile_round_trips_through_its_file(tmp_path):
    rng = np.random.default_rng(11)
    X = drifting(rng, 1000, features=3)
    X[:, 2] = rng.integers(0, 4, 1000)
    profile = build_profile(X, ["a", "b", "c"], categorical=["c"], outputs=X[:, :1])
    path = profile.save(tmp_path)
    assert ReferenceProfile.load(path) == profile
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ProfileError, match="cannot read drift profile"):
        ReferenceProfile.load(tmp_path / "bad.json")


def test_small_windows_get_no_verdict():
    rng = np.random.default_rng(12)
    profile = build_profile(drifting(rng, 5_000, features=2))
    monitor = DriftMonitor(profile, DriftConfig(window_rows=100, window_seconds=0,
                                                policy=DriftPolicy(min_rows=1000)))
    monitor.offer(drifting(rng, 100, features=2, shift=5.0, column=0))
    monitor.flush()
    w = monitor.windows(include_open=False)[-1]
    assert w.verdict == "insufficient data" and w.drifted_features == []
    monitor.stop()


def test_a_batch_with_bad_outputs_is_rejected_whole_and_windows_still_close():
    numeric = [(0, [0.0, 1.0])]
    monitor = _core.DriftMonitor(numeric, [], output_numeric=[(1, [0.5])], window_seconds=0, window_rows=100)
    for rows in (30, 80):  # outputs of one column, the profile watches column 1
        monitor.offer(np.zeros((rows, 1), np.float32), np.zeros((rows, 1), np.float32))
    monitor.flush()
    stats = monitor.stats()
    assert stats["rows_rejected"] == 110 and stats["rows_seen"] == 0
    monitor.offer(np.zeros((150, 1), np.float32), np.zeros((150, 2), np.float32))
    monitor.flush()
    assert [w["inputs"].rows for w in monitor.windows()] == [100, 50]
    monitor.stop()
    with pytest.raises(ValueError, match="window_seconds"):
        _core.DriftMonitor(numeric, [], window_seconds=float("inf"))


def test_the_alert_is_the_latest_closed_window_whatever_the_slice():
    rng = np.random.default_rng(13)
    profile = build_profile(drifting(rng, 20_000, features=2))
    monitor = DriftMonitor(profile, DriftConfig(window_rows=5_000, window_seconds=0))
    monitor.offer(drifting(rng, 5_000, features=2, shift=1.0, column=0))
    monitor.offer(drifting(rng, 100, features=2))
    monitor.flush()
    assert monitor.report().alert and monitor.report(last=1).alert
    monitor.stop()


def test_the_last_n_windows_are_the_tail_of_all_and_closed_statistics_are_made_once():
    rng = np.random.default_rng(3)
    profile = build_profile(rng.normal(size=(4000, 3)))
    monitor = DriftMonitor(profile, DriftConfig(window_rows=100, window_seconds=0, history=50,
                                                policy=DriftPolicy(min_rows=50)))
    monitor.offer(rng.normal(size=(1050, 3)).astype(np.float32))
    monitor.flush()
    every = monitor.native.windows(True)
    assert len(every) == 11 and not every[-1]["closed"]
    for last in (1, 2, 5, 11, 40):
        tail = monitor.native.windows(True, last)
        assert [(w["start"], w["inputs"].rows) for w in tail] == [(w["start"], w["inputs"].rows)
                                                                  for w in every[-last:]]
    assert [w["start"] for w in monitor.native.windows(False, 3)] == [w["start"] for w in every[-4:-1]]
    first = monitor.report(True, 4)
    again = monitor.report(True, 4)
    assert [w.start for w in first.windows] == [w["start"] for w in every[-4:]]
    assert all(a is b for a, b in zip(first.windows[:-1], again.windows[:-1]))  # closed: made once
    assert first.windows[-1] is not again.windows[-1]  # the open window is made fresh each time
    fresh = monitor.windows(include_open=False)[-3:]  # made without the cache
    assert msgspec.json.encode(again.windows[:-1]) == msgspec.json.encode(fresh)
    monitor.stop()


def test_the_config_sets_how_many_extremes_a_window_keeps():
    rng = np.random.default_rng(2)
    reference = rng.standard_normal((5_000, 2))
    profile = build_profile(reference, ["a", "b"])
    X = rng.standard_normal((3_000, 2))
    for k in (16, 64):
        monitor = DriftMonitor(profile, DriftConfig(window_rows=1_000, window_seconds=0, extremes=k))
        try:
            monitor.offer(X)
            monitor.flush()
            window = monitor.raw_windows()[0]["inputs"]
            bottom, top = window.extremes(0)
            assert top.tolist() == np.sort(X[:1_000, 0])[-k:].tolist() and len(bottom) == k
        finally:
            monitor.stop()
