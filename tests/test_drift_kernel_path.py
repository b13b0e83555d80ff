"""The drift monitor's kernel path (monitor/device.py: the accumulators on the model's device,
updated by the Triton kernels) against the native C++ path: the same traffic gives the same
windows, statistics, report and merge format. Here the kernel path runs on CPU tensors under
the interpreter (TRITON_INTERPRET=1, conftest.py), forced with `device="cpu"` or
`use_kernels=True`; production picks it for a torch model on a CUDA device. Small shapes: the
interpreter is slow."""

import numpy as np
import pytest

from loopserve import kernels
from loopserve.config import DriftConfig
from loopserve.monitor.monitor import DriftMonitor, merge_windows
from loopserve.monitor.profile import build_profile

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not kernels.available(), reason="triton is not installed")


def traffic(rng, rows, shift=0.0):
    X = rng.normal(size=(rows, 4)).astype(np.float32)
    X[:, 0] += shift
    X[:, 3] = rng.integers(0, 9, rows)
    X[::17, 1] = np.nan
    X[::29, 2] = np.inf
    return X


def assert_same_accumulator(a, b):
    assert a.rows == b.rows
    for f in range(a.numeric_count):
        assert a.bin_counts(f).tolist() == b.bin_counts(f).tolist()
        assert a.numeric_missing(f) == b.numeric_missing(f)
        # Bin sums (Wasserstein's): float64 on the device, float32 block sums natively.
        assert a.bin_sums(f) == pytest.approx(b.bin_sums(f), rel=1e-6, abs=1e-6 * a.bin_counts(f).sum())
        ma, mb = a.moments(f), b.moments(f)
        assert (ma.count, ma.missing, ma.min, ma.max) == (mb.count, mb.missing, mb.min, mb.max)
        assert ma.mean == pytest.approx(mb.mean, rel=1e-9, abs=1e-12)
        assert ma.variance == pytest.approx(mb.variance, rel=1e-9)
        ea, eb = a.exact_values(f), b.exact_values(f)
        assert (ea is None) == (eb is None) and (ea is None or ea.tolist() == eb.tolist())  # every value kept alike
        if ea is not None or a.quantiles(f).count == 0:  # (past exact_values both sample alike, not the same rows)
            assert a.quantiles(f).serialize() == b.quantiles(f).serialize()
        assert [e.tolist() for e in a.extremes(f)] == [e.tolist() for e in b.extremes(f)]  # the same k extremes
    for c in range(a.categorical_count):
        assert a.category_counts(c).tolist() == b.category_counts(c).tolist()
        assert a.category_missing(c) == b.category_missing(c)


def test_the_same_traffic_gives_the_same_windows_on_both_paths():
    rng = np.random.default_rng(0)
    ref = traffic(rng, 2000)
    profile = build_profile(ref, ["a", "b", "c", "k"], categorical=["k"], outputs=ref[:, :1] * 2,
                            output_names=["score"])
    config = DriftConfig(window_rows=300, window_seconds=0, quantile_sample_every=3, extremes=24)
    native = DriftMonitor(profile, config)
    device = DriftMonitor(profile, config, device="cpu")
    try:
        for rows, shift in ((130, 0.0), (250, 0.0), (90, 1.5), (260, 1.5)):  # batches cross the boundaries
            X = traffic(rng, rows, shift)
            for m in (native, device):
                m.offer(X, X[:, :1] * 2)
        native.flush()
        device.flush()
        wn, wd = native.raw_windows(), device.raw_windows()
        assert [w["closed"] for w in wn] == [w["closed"] for w in wd] == [True, True, False]
        for a, b in zip(wn, wd):
            assert_same_accumulator(a["inputs"], b["inputs"])
            assert_same_accumulator(a["outputs"], b["outputs"])
        rn, rd = native.report(), device.report()
        assert rn.monitor == rd.monitor and rd.monitor.rows_seen == 730 and rd.monitor.windows_closed == 2
        assert [w.verdict for w in rn.windows] == [w.verdict for w in rd.windows]
        # the sketch payload deserializes and merges like the native one
        merged = merge_windows(device.sketch().windows)
        assert merged["inputs"].rows == 730
        device.close_window()
        assert device.stats()["windows_closed"] == 3
    finally:
        native.stop()
        device.stop()


@pytest.mark.parametrize("exact_values", [0, 200])
def test_past_exact_values_both_paths_fall_back_to_a_sample_of_the_whole_window(exact_values):
    """A window of 600 rows past exact_values: neither path keeps its values, the counts stay
    bit for bit the same, and each quantile sketch holds a Bernoulli(1/3) sample of all 600 rows
    (the same rows when nothing was kept first; drawn apart once kept values were let go)."""
    rng = np.random.default_rng(4)
    profile = build_profile(traffic(rng, 2000), ["a", "b", "c", "k"], categorical=["k"])
    config = DriftConfig(window_rows=600, window_seconds=0, quantile_sample_every=3, exact_values=exact_values)
    native, device = DriftMonitor(profile, config), DriftMonitor(profile, config, device="cpu")
    try:
        for rows in (130, 250, 220):
            X = traffic(rng, rows)
            for m in (native, device):
                m.offer(X)
        native.flush()
        device.flush()
        a, b = native.raw_windows()[0]["inputs"], device.raw_windows()[0]["inputs"]
        assert_same_accumulator(a, b)
        for acc in (a, b):
            assert acc.exact_values(0) is None
            assert 600 / 3 - 45 < acc.quantiles(0).count < 600 / 3 + 45  # finite rows of column 0: all 600
        if exact_values == 0:
            assert a.quantiles(0).serialize() == b.quantiles(0).serialize()
    finally:
        native.stop()
        device.stop()


def test_a_window_with_fewer_values_than_both_sides_keep_has_the_same_extremes_on_both_paths():
    """15 rows against k = 16 a side: the device's top and bottom lists share every value, and
    each must go to its own side only (both sides once held every value twice)."""
    profile = build_profile(np.random.default_rng(0).normal(size=(2000, 2)).astype(np.float32), ["a", "b"])
    config = DriftConfig(window_rows=1000, window_seconds=0, quantile_sample_every=1, extremes=16)
    native, device = DriftMonitor(profile, config), DriftMonitor(profile, config, device="cpu")
    try:
        X = np.arange(30, dtype=np.float32).reshape(15, 2)
        X[::4, 1] = np.nan
        for m in (native, device):
            m.offer(X)
            m.flush()
        a, b = native.raw_windows()[-1]["inputs"], device.raw_windows()[-1]["inputs"]
        assert_same_accumulator(a, b)
        assert [e.tolist() for e in b.extremes(0)] == [X[:, 0].tolist()] * 2  # each value once a side
    finally:
        native.stop()
        device.stop()


def test_a_served_model_feeds_the_kernel_path_from_its_backend():
    """A torch model's batches reach the kernel path from the backend's tensors (not the
    batcher's observer): the window equals a native monitor offered the same rows."""
    from loopserve import Model, zoo
    from conftest import vector_config

    rng = np.random.default_rng(1)
    module = zoo.tiny_mlp()
    width = module[0].in_features if hasattr(module, "__getitem__") else 4
    ref = rng.normal(size=(1000, width)).astype(np.float32)
    profile = build_profile(ref)
    config = DriftConfig(window_rows=10_000, window_seconds=0)
    model = Model.from_module(module, vector_config(width=width, out_width=2, max_batch_size=64))
    native = DriftMonitor(profile, config)
    try:
        monitor = DriftMonitor.for_model(model, profile, config, use_kernels=True)
        assert monitor.device_path is not None and model.backend.drift_observer is monitor.device_path
        for rows in (5, 40, 17):
            X = rng.normal(size=(rows, width)).astype(np.float32)
            model.infer_sync({"x": X})
            native.offer(X)
        monitor.flush()
        native.flush()
        assert_same_accumulator(native.raw_windows()[-1]["inputs"], monitor.raw_windows()[-1]["inputs"])
        assert monitor.stats()["rows_seen"] == 62
    finally:
        model.close()
        native.stop()
