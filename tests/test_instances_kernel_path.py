"""Two instances of a torch model feed one drift monitor's kernel path at once (on a GPU each from
its own CUDA stream; here from its own executor thread, the kernels interpreted under
TRITON_INTERPRET=1, conftest.py): every row is counted once, and the window's counts equal a
native monitor's offered the same rows. The order in which the instances deliver their batches
is free, so only what does not depend on it is compared (counts exactly, moments to rounding)."""

import concurrent.futures

import numpy as np
import pytest

from loopserve import kernels
from loopserve.config import DriftConfig
from loopserve.monitor.monitor import DriftMonitor
from loopserve.monitor.profile import build_profile

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not kernels.available(), reason="triton is not installed")


def test_two_instances_feed_one_kernel_path_and_every_row_counts_once():
    from conftest import vector_config
    from loopserve import Model, zoo

    rng = np.random.default_rng(7)
    module = zoo.tiny_mlp()
    width = module[0].in_features
    ref = rng.normal(size=(1000, width)).astype(np.float32)
    profile = build_profile(ref, outputs=ref[:, :2], output_names=["a", "b"])
    config = DriftConfig(window_rows=100_000, window_seconds=0)  # one window: its boundary is order-free
    model = Model.from_module(module, vector_config(width=width, out_width=2, max_batch_size=16, instances=2,
                                                    max_queue_delay_us=2000))
    native = DriftMonitor(profile, config)
    try:
        monitor = DriftMonitor.for_model(model, profile, config, use_kernels=True)
        assert monitor.device_path is not None
        requests = [rng.normal(size=(int(rng.integers(1, 6)), width)).astype(np.float32) for _ in range(32)]
        for x in requests[::7]:
            x[0, 3] = np.nan  # missing values on both paths
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # both instances busy at once
            answers = list(pool.map(lambda x: model.infer_sync({"x": x})["y"], requests))
        for x, y in zip(requests, answers):
            native.offer(x, y)
        monitor.flush()
        native.flush()
        rows = sum(len(x) for x in requests)
        assert monitor.stats()["rows_seen"] == rows and monitor.stats()["rows_skipped"] == 0
        for tensor in ("inputs", "outputs"):
            a, b = native.raw_windows()[-1][tensor], monitor.raw_windows()[-1][tensor]
            assert a.rows == b.rows == rows
            for f in range(a.numeric_count):
                assert a.bin_counts(f).tolist() == b.bin_counts(f).tolist()
                assert a.numeric_missing(f) == b.numeric_missing(f)
                ma, mb = a.moments(f), b.moments(f)
                assert (ma.count, ma.min, ma.max) == (mb.count, mb.min, mb.max)
                assert ma.mean == pytest.approx(mb.mean, rel=1e-9, abs=1e-12)
                assert ma.variance == pytest.approx(mb.variance, rel=1e-9)
    finally:
        model.close()
        native.stop()
