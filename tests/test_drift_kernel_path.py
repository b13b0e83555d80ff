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
        assert a.quantiles(f).serialize() == b.quantiles(f).serialize()  # the same sampled rows, in order
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
