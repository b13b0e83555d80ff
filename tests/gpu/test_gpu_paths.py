"""GPU-only: the drift kernels compiled (not interpreted) on a CUDA device, the monitor's kernel
path for a model on cuda:0, a stream per instance and CUDA graphs. Skipped without a CUDA device;
`bench/gpu.sh` runs them on a GPU host (with TRITON_INTERPRET=0)."""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
                       reason="no CUDA device run: TRITON_INTERPRET is set (run with TRITON_INTERPRET=0)"),
]


def test_compiled_kernels_equal_the_torch_reference():
    from loopserve import kernels
    from loopserve.kernels import drift

    g = torch.Generator().manual_seed(0)
    x = torch.randn(100_003, 22, generator=g)
    x[::97, 3] = float("nan")
    x[:, 20] = torch.floor(1200 * torch.rand(100_003, generator=g))
    edges = torch.sort(torch.randn(20, 9, dtype=torch.float64, generator=g), dim=1).values
    cols = torch.arange(20, dtype=torch.int32)
    n_edges = torch.full((20,), 9, dtype=torch.int32)
    xd = x.cuda()
    counts = torch.zeros(20, 10, dtype=torch.int64, device="cuda")
    missing = torch.zeros(20, dtype=torch.int64, device="cuda")
    mom = drift.drift_update_(xd, numeric_cols=cols.cuda(), edges=edges.cuda(), n_edges=n_edges.cuda(),
                              counts=counts, missing=missing, with_moments=True)
    want_c, want_m = kernels.bin_counts_reference(x, cols, edges, n_edges)
    assert torch.equal(counts.cpu(), want_c) and torch.equal(missing.cpu(), want_m)
    ref = kernels.moments_reference(x, cols)
    assert torch.equal(mom[0].cpu(), ref[0])
    torch.testing.assert_close(mom[1].cpu(), ref[1], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(mom[2].cpu(), ref[2], rtol=1e-9, atol=0)


def _mlp(n_in=32, n_out=4):
    return torch.nn.Sequential(torch.nn.Linear(n_in, 64), torch.nn.ReLU(), torch.nn.Linear(64, n_out)).eval()


def _config(instances=2, **kw):
    from loopserve import DynamicBatching, ModelConfig, TensorConfig

    return ModelConfig(name="m", max_batch_size=64, device="cuda:0", instances=instances,
                       inputs=[TensorConfig("x", "FP32", [32])], outputs=[TensorConfig("y", "FP32", [4])],
                       dynamic_batching=DynamicBatching(preferred_batch_sizes=[8, 64]), **kw)


@pytest.mark.parametrize("graphs", [False, True])
def test_instances_on_their_own_streams_answer_like_the_cpu_module(graphs):
    import concurrent.futures
    import copy

    from loopserve import Model

    module = _mlp()
    model = Model.from_module(copy.deepcopy(module), _config(cuda_graphs=graphs))  # moved to the GPU
    try:
        lanes = model.backend._lanes
        assert len(lanes) == 2 and lanes[0].stream != lanes[1].stream
        rng = np.random.default_rng(0)
        xs = [rng.standard_normal((int(rng.integers(1, 9)), 32), dtype=np.float32) for _ in range(200)]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            outs = list(pool.map(lambda x: model.infer_sync({"x": x})["y"], xs))
        cpu = module
        with torch.inference_mode():
            for x, y in zip(xs, outs):
                np.testing.assert_allclose(y, cpu(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)
    finally:
        model.close()


def test_a_model_on_cuda_feeds_the_kernel_path():
    from loopserve import Model
    from loopserve.config import DriftConfig
    from loopserve.monitor.monitor import DriftMonitor
    from loopserve.monitor.profile import build_profile

    rng = np.random.default_rng(2)
    profile = build_profile(rng.standard_normal((2000, 32), dtype=np.float32))
    config = DriftConfig(window_rows=500, window_seconds=0)
    model = Model.from_module(_mlp(), _config(instances=1))
    native = DriftMonitor(profile, config)
    try:
        monitor = DriftMonitor.for_model(model, profile, config)
        assert monitor.device_path is not None  # chosen by the model's device
        for _ in range(40):
            x = rng.standard_normal((31, 32), dtype=np.float32)
            model.infer_sync({"x": x})
            native.offer(x)
        monitor.flush()
        native.flush()
        a, b = native.raw_windows(), monitor.raw_windows()
        assert len(a) == len(b) == 3
        for wa, wb in zip(a, b):
            for f in range(32):
                assert wa["inputs"].bin_counts(f).tolist() == wb["inputs"].bin_counts(f).tolist()
    finally:
        model.close()
        native.stop()


def test_a_model_that_cannot_be_captured_is_refused_clearly():
    """Last in the file: a failed capture may leave the CUDA context unusable for what follows."""
    from loopserve import Model
    from loopserve.errors import ConfigError

    class HostSync(torch.nn.Module):
        def forward(self, x):
            return x[:, :4] * float(x.sum().item())  # a host sync: not capturable

    with pytest.raises(ConfigError, match="cannot be captured as a CUDA graph"):
        Model.from_module(HostSync(), _config(cuda_graphs=True))
