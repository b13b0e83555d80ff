"""The Triton kernels (interpreted on the CPU) give exactly the native accumulators' counts,
and their moments, on the same batch and the same reference profile."""

import numpy as np
import pytest

from loopserve import _core, kernels
from loopserve.monitor.monitor import native_spec
from loopserve.monitor.profile import build_profile

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not kernels.available(), reason="triton is not installed")


@pytest.mark.parametrize("dtype,bins", [(np.float32, 10), (np.float64, 10), (np.float32, 24)])
def test_kernels_equal_the_native_accumulators(dtype, bins):
    rng = np.random.default_rng(0)
    rows = 700
    X = rng.standard_normal((rows, 6)).astype(dtype) * 3
    X[:, 4] = rng.integers(0, 12, rows)
    X[:, 5] = rng.integers(0, 40, rows)
    profile = build_profile(X[:400], [f"n{i}" for i in range(4)] + ["c1", "c2"], categorical=["c1", "c2"], top_k=8,
                            bins=bins)
    batch = X[400:].copy()
    batch[::13, 0] = np.nan
    batch[::17, 1] = np.inf
    batch[::19, 4] = -3  # missing code
    batch[::23, 5] = 1e30  # past the lookup table: "other"
    batch[5, 2] = profile.features[2].edges[3]  # exactly on an edge

    numeric, categorical = native_spec(profile.features)
    acc = _core.TensorAccumulator(numeric, categorical)
    acc.update(np.ascontiguousarray(batch))

    x = torch.from_numpy(batch)
    n_edges = [len(e) for _, e in numeric]
    e_max = max(n_edges)
    edges = torch.full((len(numeric), e_max), float("inf"), dtype=torch.float64)
    for f, (_, e) in enumerate(numeric):
        edges[f, :len(e)] = torch.tensor(e, dtype=torch.float64)
    cols = torch.tensor([c for c, _ in numeric], dtype=torch.int32)
    counts = torch.zeros((len(numeric), e_max + 1), dtype=torch.int64)
    missing = torch.zeros(len(numeric), dtype=torch.int64)
    sums = torch.zeros((len(numeric), e_max + 1), dtype=torch.float64)
    kernels.bin_counts_(x, cols, edges, torch.tensor(n_edges, dtype=torch.int32), counts, missing, sums=sums,
                        block_rows=64)  # several tiles and programs
    count, mean, m2, lo, hi = kernels.moments(x, cols)
    for f in range(len(numeric)):
        assert counts[f, :n_edges[f] + 1].tolist() == acc.bin_counts(f).tolist()
        assert int(missing[f]) == acc.numeric_missing(f)
        # Bin sums: float32 partial sums per tile (kernel) and per block (native), to rounding.
        assert sums[f, :n_edges[f] + 1].numpy() == pytest.approx(acc.bin_sums(f), rel=1e-5, abs=1e-4)
        v = batch[:, numeric[f][0]].astype(np.float64)
        v = v[np.isfinite(v)]
        exact = np.bincount(np.searchsorted(numeric[f][1], v, side="right"), weights=v, minlength=n_edges[f] + 1)
        assert acc.bin_sums(f) == pytest.approx(exact, rel=1e-5, abs=1e-4)
        m = acc.moments(f)
        assert int(count[f]) == m.count and float(lo[f]) == m.min and float(hi[f]) == m.max
        assert float(mean[f]) == pytest.approx(m.mean, rel=1e-9)
        assert float(m2[f]) / m.count == pytest.approx(m.variance, rel=1e-9)
    for c, (col, slots, lut) in enumerate(categorical):
        cat_counts = torch.zeros(slots + 1, dtype=torch.int64)
        cat_missing = torch.zeros(1, dtype=torch.int64)
        kernels.category_counts_(x, col, torch.tensor(lut, dtype=torch.int32), cat_counts, cat_missing)
        assert cat_counts.tolist() == acc.category_counts(c).tolist()
        assert int(cat_missing[0]) == acc.category_missing(c)
