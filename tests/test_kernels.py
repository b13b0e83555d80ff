"""The Triton drift kernels (loopserve.kernels) against the numpy statement of their semantics
(tests/drift_reference.py), run on the CPU by Triton's interpreter (TRITON_INTERPRET=1, set in
conftest.py). Sizes are small: the interpreter runs every program in Python."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")

from drift_reference import numpy_bin_counts, numpy_category_counts, numpy_moments  # noqa: E402
from loopserve import kernels  # noqa: E402
from loopserve.kernels import aot, drift  # noqa: E402

INF = float("inf")
F32_MAX = float(np.finfo(np.float32).max)
# Small tiles and few programs so that every launch has several programs, each walking several
# row tiles, and a last partial tile.
SMALL = dict(block_rows=32, max_programs=3)


def make_edges(rng):
    """Five features: 9 edges (10 bins); 3 with duplicates; none (1 bin); 4 whose padding is junk
    (must be ignored: n_edges rules); 6 edges that are not float32 numbers, some beyond float32."""
    e_max = 9
    edges = np.full((5, e_max), np.inf)
    edges[0] = np.quantile(rng.normal(size=1000), np.arange(1, 10) / 10)
    edges[1, :3] = [-0.5, 0.25, 0.25]
    edges[3, :4] = [-1.0, 0.0, 0.0, 2.0]
    edges[3, 4:] = [-5.0, 0.0, 1.0, 3.0, -7.0]  # junk past n_edges
    edges[4, :6] = [-1e39, -0.1, 0.1, 1 / 3, 1.0 + 2.0**-40, 1e39]
    n_edges = np.array([9, 3, 0, 4, 6], dtype=np.int32)
    return edges, n_edges


def make_x(rng, rows, dtype, edges, n_edges, width=9, cols=(0, 2, 3, 5, 8), extremes=False):
    """Random values with NaN and +-inf, values exactly on the edges and on their float32
    neighbours, and (`extremes`) +-max in the last rows; the numeric features sit in `cols` of a
    wider batch."""
    x = rng.normal(scale=1.5, size=(rows, width))
    for f, c in enumerate(cols):
        real = edges[f, : n_edges[f]]
        if real.size:
            pick = rng.random(rows) < 0.3
            x[pick, c] = rng.choice(real, pick.sum())
        if dtype == np.float32 and real.size:
            e32 = real[np.abs(real) <= F32_MAX].astype(np.float32)
            near = np.concatenate([e32, np.nextafter(e32, np.float32(-np.inf)), np.nextafter(e32, np.float32(np.inf))])
            near = near[np.isfinite(near)]
            x[: near.size, c] = near
    if np.issubdtype(dtype, np.floating):
        x[rng.random(x.shape) < 0.05] = np.nan
        x[rng.random(x.shape) < 0.02] = np.inf
        x[rng.random(x.shape) < 0.02] = -np.inf
        if extremes:
            top = F32_MAX if dtype == np.float32 else 1e300
            x[-4:, 8] = [top, -top, 0.0, -0.0]
        with np.errstate(over="ignore"):  # +-1e39 edges placed in the data become +-inf in float32
            return x.astype(dtype)
    return np.clip(np.round(x), -2e9, 2e9).astype(dtype)  # integer edges (feature 3) are hit exactly


def run_bins(x, cols, edges, n_edges, counts=None, missing=None, **kw):
    F, e_max = edges.shape
    counts = torch.zeros((F, e_max + 1), dtype=torch.int64) if counts is None else counts
    missing = torch.zeros(F, dtype=torch.int64) if missing is None else missing
    drift.bin_counts_(x, torch.tensor(cols, dtype=torch.int32), torch.from_numpy(edges),
                      torch.from_numpy(n_edges), counts, missing, **kw)
    return counts, missing


def assert_moments(got, want, rtol=1e-9):
    n, mean, m2, mn, mx = (t.numpy() for t in got)
    wn, wmean, wm2, wmn, wmx = want
    np.testing.assert_array_equal(n, wn)
    np.testing.assert_array_equal(mn, wmn)
    np.testing.assert_array_equal(mx, wmx)
    np.testing.assert_allclose(mean, wmean, rtol=rtol, atol=0)
    np.testing.assert_allclose(m2, wm2, rtol=rtol, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64])
def test_bin_counts_and_moments_equal_numpy(dtype):
    rng = np.random.default_rng(1)
    edges, n_edges = make_edges(rng)
    cols = (0, 2, 3, 5, 8)
    x = torch.from_numpy(make_x(rng, 301, dtype, edges, n_edges, extremes=True))
    counts, missing = run_bins(x, cols, edges, n_edges, **SMALL)
    want_counts, want_missing = numpy_bin_counts(x.numpy(), cols, edges, n_edges)
    np.testing.assert_array_equal(counts.numpy(), want_counts)
    np.testing.assert_array_equal(missing.numpy(), want_missing)
    assert want_counts.sum() + want_missing.sum() == 301 * len(cols)
    if np.issubdtype(dtype, np.floating):
        assert want_missing.min() > 0
    # bins that are empty by construction (duplicate edges) stay empty, and no count lands past a
    # feature's last bin
    assert counts[1, 2] == 0 and counts[3, 2] == 0 and counts[2, 1:].sum() == 0 and counts[3, 5:].sum() == 0
    # moments without the +-max rows: their sum cancels, and no two summation orders agree to 1e-9
    # relative on what is left (min and max with the extremes are checked in test_moments_edge_cases)
    xm = x[:-4]
    assert_moments(drift.moments(xm, torch.tensor(cols, dtype=torch.int32), **SMALL),
                   numpy_moments(xm.numpy(), cols))


def test_float32_edge_rounding_is_exact():
    """float32 values are compared in float32 against edges rounded up to float32: every float32
    around an edge that is not a float32 number (and around ones beyond float32's range) bins as
    the float64 comparison does."""
    edges = np.array([[1e-45, 0.1, 1 / 3, 3e38, 1e39], [-1e39, -3e38, -0.1, 0.0, 16777217.0]])
    n_edges = np.array([5, 5], dtype=np.int32)
    vals = []
    for e in edges.ravel():
        with np.errstate(over="ignore"):
            c = np.float32(e)
        vals += [c, np.nextafter(c, np.float32(-np.inf)), np.nextafter(c, np.float32(np.inf))]
    vals = np.array(vals + [F32_MAX, -F32_MAX, np.float32(1e-45), -0.0], dtype=np.float32)
    vals = vals[np.isfinite(vals)]
    x = torch.from_numpy(np.stack([vals, vals[::-1].copy()], axis=1))
    assert drift._edges_f32(torch.from_numpy(edges)).dtype == torch.float32
    counts, missing = run_bins(x, (0, 1), edges, n_edges, block_rows=16, max_programs=2)
    want, want_missing = numpy_bin_counts(x.numpy(), (0, 1), edges, n_edges)
    np.testing.assert_array_equal(counts.numpy(), want)
    assert missing.sum() == 0 == want_missing.sum()


def test_int64_converts_to_float64_like_numpy():
    """int64 values are binned after conversion to float64 (round to nearest even), as the C++
    path and numpy do: 2**53 + 3 becomes 2**53 + 4 and lands on an edge at 2**53 + 4."""
    big = 2**53
    edges = np.array([[float(big), float(big + 4)]])
    x = torch.tensor([[big + 1], [big + 3], [big + 5], [-big - 3], [big + 2]], dtype=torch.int64)
    counts, _ = run_bins(x, (0,), edges, np.array([2], dtype=np.int32))
    np.testing.assert_array_equal(counts.numpy(), numpy_bin_counts(x.numpy(), (0,), edges, [2])[0])
    assert counts.tolist() == [[1, 2, 2]]


def test_strided_column_reads():
    """Columns of a wider batch read in place: a column slice with a storage offset, and a
    column-major batch (row stride 1)."""
    rng = np.random.default_rng(2)
    edges, n_edges = make_edges(rng)
    cols = (0, 2, 3, 5, 8)
    wide = torch.from_numpy(make_x(rng, 150, np.float32, edges, n_edges, width=13, cols=(3, 5, 6, 8, 11)))
    view = wide[:, 3:]  # row stride 13, offset 3
    assert not view.is_contiguous()
    colmajor = view.numpy().copy(order="F")
    for x in (view, torch.from_numpy(colmajor)):
        counts, missing = run_bins(x, cols, edges, n_edges, **SMALL)
        want_counts, want_missing = numpy_bin_counts(x.numpy(), cols, edges, n_edges)
        np.testing.assert_array_equal(counts.numpy(), want_counts)
        np.testing.assert_array_equal(missing.numpy(), want_missing)
        assert_moments(drift.moments(x, torch.tensor(cols, dtype=torch.int32), **SMALL), numpy_moments(x.numpy(), cols))
    np.testing.assert_array_equal(colmajor, view.numpy())  # nothing was written to x


def test_counts_accumulate_across_calls_and_moments_merge():
    rng = np.random.default_rng(3)
    edges, n_edges = make_edges(rng)
    cols = (0, 2, 3, 5, 8)
    a = make_x(rng, 97, np.float64, edges, n_edges)
    b = make_x(rng, 64, np.float64, edges, n_edges) + 1000.0  # a shifted window: merge must use deltas
    counts = torch.full((5, 10), 7, dtype=torch.int64)
    missing = torch.full((5,), 2, dtype=torch.int64)
    run_bins(torch.from_numpy(a), cols, edges, n_edges, counts, missing, **SMALL)
    run_bins(torch.from_numpy(b), cols, edges, n_edges, counts, missing, **SMALL)
    ca, ma = numpy_bin_counts(a, cols, edges, n_edges)
    cb, mb = numpy_bin_counts(b, cols, edges, n_edges)
    np.testing.assert_array_equal(counts.numpy(), ca + cb + 7)
    np.testing.assert_array_equal(missing.numpy(), ma + mb + 2)
    icol = torch.tensor(cols, dtype=torch.int32)
    merged = kernels.merge_moments(drift.moments(torch.from_numpy(a), icol, **SMALL),
                                   drift.moments(torch.from_numpy(b), icol, **SMALL))
    assert_moments(merged, numpy_moments(np.concatenate([a, b]), cols))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # squares of +-1e300 overflow, as intended
def test_moments_edge_cases():
    """An all-NaN feature (count 0: 0, 0, +inf, -inf), a constant one (m2 exactly 0), a large
    offset with a small spread (the two-pass form keeps m2 to 1e-9), an empty batch."""
    rng = np.random.default_rng(4)
    x = np.stack([np.full(200, np.nan), np.full(200, 2.5), 1e8 + rng.normal(scale=1e-3, size=200),
                  rng.normal(size=200)], axis=1)
    x[::7, 3] = -np.inf
    icol = torch.arange(4, dtype=torch.int32)
    got = drift.moments(torch.from_numpy(x), icol, **SMALL)
    assert_moments(got, numpy_moments(x, range(4)))
    assert got[0][0] == 0 and got[3][0] == INF and got[4][0] == -INF and got[2][1] == 0.0
    x[:2, 3] = [1e300, -1e300]  # extremes: count, min and max still exact
    n, _, _, mn, mx = drift.moments(torch.from_numpy(x), icol, **SMALL)
    wn, _, _, wmn, wmx = numpy_moments(x, range(4))
    assert n.tolist() == wn.tolist() and mn.tolist() == wmn.tolist() and mx.tolist() == wmx.tolist()
    assert mn[3] == -1e300 and mx[3] == 1e300
    empty = drift.moments(torch.from_numpy(x[:0]), icol)
    assert empty[0].tolist() == [0] * 4 and empty[3].tolist() == [INF] * 4 and empty[1].tolist() == [0.0] * 4
    counts, missing = run_bins(torch.from_numpy(x[:0]), (0, 1), np.zeros((2, 1)), np.ones(2, dtype=np.int32))
    assert counts.sum() == 0 and missing.sum() == 0


def make_lut(rng, n_codes, k):
    """Codes 0..n_codes-1 to slots in [0, K]: mostly distinct slots, some pooled into K."""
    lut = rng.permutation(max(n_codes, k))[:n_codes] % (k + 1)
    return torch.from_numpy(lut.astype(np.int32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64])
@pytest.mark.parametrize("mode", ["hist", "atomic"])
def test_category_counts_equal_numpy(dtype, mode):
    """K = 1000 slots, codes beyond the table (-> K), negative codes (missing); for floats also
    NaN/inf (missing), -0.5 (truncates to code 0), -1.0 (missing), 2.9 (code 2) and 1e30 (-> K)."""
    rng = np.random.default_rng(5)
    k, n_codes = 1000, 1200
    lut = make_lut(rng, n_codes, k)
    codes = rng.integers(-20, 1400, size=(400, 3))
    x = codes.astype(dtype)
    if np.issubdtype(dtype, np.floating):
        x[:8, 1] = [np.nan, np.inf, -np.inf, -0.5, -1.0, 2.9, 1e30, -1e30]
    else:
        x[:2, 1] = [np.iinfo(dtype).max, np.iinfo(dtype).min]
    counts = torch.zeros(k + 1, dtype=torch.int64)
    missing = torch.zeros(1, dtype=torch.int64)
    xt = torch.from_numpy(x)
    drift.category_counts_(xt, 1, lut, counts, missing, cat_mode=mode, **SMALL)
    want, want_missing = numpy_category_counts(x, 1, lut.numpy(), k)
    np.testing.assert_array_equal(counts.numpy(), want)
    assert missing.item() == want_missing > 0
    assert want[k] > 0 and counts.sum() + missing.sum() == 400
    drift.category_counts_(xt, 1, lut, counts, missing, cat_mode=mode, **SMALL)  # accumulates
    np.testing.assert_array_equal(counts.numpy(), 2 * want)


def test_fused_update_many_columns_and_feature_blocks():
    """One launch for 70 numeric features (two feature blocks) and three categorical columns with
    different table sizes and K (one with an empty table): everything equals numpy, and each
    categorical value is counted once although two feature blocks run per row tile."""
    rng = np.random.default_rng(6)
    F, rows = 70, 90
    x = rng.normal(size=(rows, F + 3))
    x[rng.random(x.shape) < 0.05] = np.nan
    tables = [(50, 10), (5, 3), (0, 1)]  # (L, K)
    for j, (n_codes, k) in enumerate(tables):
        x[:, F + j] = rng.integers(-3, n_codes + 20, size=rows)
    x[0, F] = np.nan
    edges = np.sort(rng.normal(size=(F, 4)), axis=1)
    n_edges = rng.integers(0, 5, size=F).astype(np.int32)
    luts = torch.zeros((3, 50), dtype=torch.int32)
    for j, (n_codes, k) in enumerate(tables):
        luts[j, :n_codes] = make_lut(rng, n_codes, k)
    xt = torch.from_numpy(x)
    num_cols = torch.arange(F, dtype=torch.int32)
    counts = torch.zeros((F, 5), dtype=torch.int64)
    missing = torch.zeros(F, dtype=torch.int64)
    cat_counts = torch.zeros((3, 11), dtype=torch.int64)
    cat_missing = torch.zeros(3, dtype=torch.int64)
    mom = drift.drift_update_(
        xt, numeric_cols=num_cols, edges=torch.from_numpy(edges), n_edges=torch.from_numpy(n_edges),
        counts=counts, missing=missing, with_moments=True,
        cat_cols=torch.arange(F, F + 3, dtype=torch.int32), luts=luts,
        lut_sizes=torch.tensor([t[0] for t in tables], dtype=torch.int32),
        n_other=torch.tensor([t[1] for t in tables], dtype=torch.int32),
        cat_counts=cat_counts, cat_missing=cat_missing, block_rows=32, max_programs=2)
    want_counts, want_missing = numpy_bin_counts(x, range(F), edges, n_edges)
    np.testing.assert_array_equal(counts.numpy(), want_counts)
    np.testing.assert_array_equal(missing.numpy(), want_missing)
    assert_moments(mom, numpy_moments(x, range(F)))
    for j, (n_codes, k) in enumerate(tables):
        want, want_miss = numpy_category_counts(x, F + j, luts[j, :n_codes].numpy(), k)
        np.testing.assert_array_equal(cat_counts[j, : k + 1].numpy(), want)
        assert cat_counts[j, k + 1:].sum() == 0
        assert cat_missing[j].item() == want_miss


def test_torch_references_equal_numpy():
    rng = np.random.default_rng(7)
    edges, n_edges = make_edges(rng)
    cols = (0, 2, 3, 5, 8)
    x = make_x(rng, 200, np.float32, edges, n_edges)
    icol = torch.tensor(cols, dtype=torch.int32)
    c, m = kernels.bin_counts_reference(torch.from_numpy(x), icol, torch.from_numpy(edges), torch.from_numpy(n_edges))
    want_c, want_m = numpy_bin_counts(x, cols, edges, n_edges)
    np.testing.assert_array_equal(c.numpy(), want_c)
    np.testing.assert_array_equal(m.numpy(), want_m)
    assert_moments(kernels.moments_reference(torch.from_numpy(x), icol), numpy_moments(x, cols))
    codes = np.array([[-1.0], [0.5], [-0.5], [np.nan], [7.0], [3.0], [1e30]])
    lut = torch.tensor([2, 0, 1, 1], dtype=torch.int32)
    cc, cm = kernels.category_counts_reference(torch.from_numpy(codes), 0, lut, 3)
    want, want_miss = numpy_category_counts(codes, 0, lut.numpy(), 3)
    assert cc.tolist() == want.tolist() == [0, 1, 2, 2] and cm.item() == want_miss == 2


def test_bad_arguments_are_refused():
    x = torch.zeros((4, 3))
    cols = torch.tensor([0, 1], dtype=torch.int32)
    edges = torch.zeros((2, 2), dtype=torch.float64)
    ne = torch.full((2,), 2, dtype=torch.int32)
    counts, missing = torch.zeros((2, 3), dtype=torch.int64), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="float32, float64"):
        drift.bin_counts_(x.half(), cols, edges, ne, counts, missing)
    with pytest.raises(ValueError, match="2-D"):
        drift.moments(x[0], cols)
    with pytest.raises(ValueError, match="numeric_cols has values"):
        drift.bin_counts_(x, torch.tensor([0, 3], dtype=torch.int32), edges, ne, counts, missing)
    with pytest.raises(ValueError, match="counts must have shape"):
        drift.bin_counts_(x, cols, edges, ne, counts[:, :2], missing)
    with pytest.raises(ValueError, match="edges must be"):
        drift.bin_counts_(x, cols, edges.float(), ne, counts, missing)
    with pytest.raises(ValueError, match="n_edges has values"):
        drift.bin_counts_(x, cols, edges, torch.full((2,), 3, dtype=torch.int32), counts, missing)
    with pytest.raises(ValueError, match="sorted"):
        drift.bin_counts_(x, cols, torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64), ne, counts, missing)
    with pytest.raises(ValueError, match="luts has slots"):
        drift.category_counts_(x, 0, torch.tensor([0, 5], dtype=torch.int32), torch.zeros(3, dtype=torch.int64),
                               torch.zeros(1, dtype=torch.int64))
    assert counts.sum() == 0 and missing.sum() == 0


def test_import_is_cheap_and_survives_without_triton():
    """`import loopserve.kernels` adds neither torch nor triton to what `import loopserve` loads,
    and with triton missing it still imports and `available()` is False."""
    code = ("import sys; sys.modules['triton'] = None; import loopserve; before = set(sys.modules); "
            "import loopserve.kernels as k; new = set(sys.modules) - before; "
            "assert not {m.split('.')[0] for m in new} & {'torch', 'triton', 'numpy'}, new; print(k.available())")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    assert kernels.available()


def test_kernels_compile_for_h100():
    """The interpreter never lowers the kernels: compile every launch variant for sm_90 (Triton ->
    PTX -> cubin, no GPU needed) so that GPU-only compile errors fail here too."""
    if importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("this triton build has no NVIDIA backend, so there is no compiler to lower the kernels "
                    "for sm_90 (the interpreted tests above still check every result)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    out = subprocess.run([sys.executable, "-m", "loopserve.kernels.aot", "90"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("compiled") == len(aot.variants()) + 1


def test_many_edges_and_long_programs():
    """20 edges (two edge windows: two launches) and one program walking 258 tiles (its packed
    8-bit lanes are emptied after 255): counts still equal numpy, moments to 1e-9."""
    rng = np.random.default_rng(8)
    edges = np.sort(rng.normal(size=(2, 20)), axis=1)
    n_edges = np.array([20, 17], dtype=np.int32)
    x = rng.normal(size=(516, 3)).astype(np.float32)
    x[::11, 0] = np.nan
    cols = torch.tensor([0, 2], dtype=torch.int32)
    counts, missing = torch.zeros((2, 21), dtype=torch.int64), torch.zeros(2, dtype=torch.int64)
    mom = drift.drift_update_(torch.from_numpy(x), numeric_cols=cols, edges=torch.from_numpy(edges),
                              n_edges=torch.from_numpy(n_edges), counts=counts, missing=missing, with_moments=True,
                              block_rows=2, max_programs=1)
    want_counts, want_missing = numpy_bin_counts(x, (0, 2), edges, n_edges)
    np.testing.assert_array_equal(counts.numpy(), want_counts)
    np.testing.assert_array_equal(missing.numpy(), want_missing)
    assert_moments(mom, numpy_moments(x, (0, 2)))


def test_moments_merge_into_running_ones_in_the_same_launch():
    """moments_into: the batch's moments merged (Chan) into running ones in place, as
    merge_moments would; an all-NaN batch leaves them as they were."""
    rng = np.random.default_rng(9)
    a = rng.normal(size=(70, 3)) + 50.0
    b = rng.normal(scale=2.0, size=(45, 3))
    icol = torch.arange(3, dtype=torch.int32)
    n = torch.zeros(3, dtype=torch.int64)
    planes = torch.zeros((4, 3), dtype=torch.float64)
    planes[2], planes[3] = INF, -INF
    for part in (a, np.full((5, 3), np.nan), b):
        assert drift.moments(torch.from_numpy(part), icol, moments_into=(n, planes), **SMALL) is None
    assert_moments((n, *planes), numpy_moments(np.concatenate([a, b]), range(3)))
