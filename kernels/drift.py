"""Drift accumulators for a batch already on the GPU, as Triton kernels.

Semantics (the C++ accumulators in `loopserve._core` implement the same; counts are equal):

- `bin_counts_`: per numeric feature f (column `numeric_cols[f]` of x), each value v as float64;
  not finite -> `missing[f] += 1`; else `counts[f, #{real edges e : e <= v}] += 1` and, when
  `sums` is given, `sums[f, that bin] += v` (float32 sums per tile for float32 input, of v less the
  feature's middle edge, float64 across tiles, as the native accumulator; equal to rounding).
- `moments`: per feature over its finite values: count, mean, m2 = sum (v - mean)^2, min, max
  (float64; count 0 gives 0, 0, +inf, -inf). Per batch; combine batches with `merge_moments`.
- `category_counts_`: code = the value (floats: non-finite -> missing, else truncated toward
  zero); code < 0 -> missing; slot = lut[code] if code < L else K; `counts[slot] += 1`. Accumulates.

`drift_update_` does all of them in one launch, reading each row of x once (plus a tiny launch that
merges the moments). x may be float32, float64, int32 or int64 with any strides, so the columns of
a wider row-major batch are read in place.

How the counts stay exact:
- float64, int32 and int64 inputs are converted to float64 in registers and compared with the
  float64 edges: the semantics by construction (int64 -> float64 rounds as C++ and numpy do).
- float32 inputs (the common case) are compared in float32 against the edges rounded *up* to
  float32 (`ceil32(e)`, the least float32 >= e; -inf.. overflow handled, see `_edges_f32`). For any
  float32 v, `e <= v  <=>  ceil32(e) <= v`: if e <= v then v is a float32 >= e, hence >= ceil32(e);
  conversely e <= ceil32(e) <= v. So fp32 inputs never need fp64 compares (slow on most GPUs
  other than the H100/A100 class), and fp32 min/max are exact as well.
- Moments are summed in float64 (fp32 sums would miss the 1e-9 target by orders of magnitude):
  per row tile a two-pass mean and m2 on registers, merged with Chan's formula per program and
  across programs (`moments_finalize`). Values are shifted by a pivot per feature (row 0's value
  when finite) first, so tile means differ at the scale of the spread rather than of the mean:
  this matches a two-pass over the batch to ~1e-12 even for |mean| / std ~ 1e11.

How it is meant to reach memory bandwidth (target: >= 50% of the copy bandwidth, `bench/drift_gpu.py`):
- one pass over x: a [BLOCK_R, BLOCK_F] tile of all numeric columns per step (the rows' bytes
  are read contiguously), the categorical columns of the same rows next to it;
- a persistent grid (about 4 programs per SM) walking row tiles, with no reduction across
  threads and no atomic per tile: counts are kept per element of the tile, cumulative (finite,
  >= each edge: one compare and one add per value and edge) and packed four 8-bit lanes to an
  int32; moments as per-element shifted sums. Each program writes its partial counts and moments
  once, and `drift_finalize` reduces them (no global atomics for the numeric part);
- categorical slots are counted with `tl.histogram` per tile into a register histogram when
  (columns x slots) fits (<= 4096 cells: K = 1000 with two columns), else with one atomic per
  value spread over the K slots.
What each choice did to registers and spills is in the README ("Drift kernels on the GPU").
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import torch

from loopserve.kernels.reference import (  # noqa: F401  (re-exported)
    bin_counts_reference, category_counts_reference, merge_moments, moments_reference)

SUPPORTED = (torch.float32, torch.float64, torch.int32, torch.int64)
CAT_HIST_MAX_CELLS = 4096  # register histogram up to this many (column, slot) cells
TILE_VALUES = 512  # values per tile on a GPU (BLOCK_R * BLOCK_F): 4 per thread with 4 warps. Every
# per-element accumulator costs (values per thread) registers, so the tile sets the register bill:
# see the README's "Drift kernels on the GPU" for the sm_90 figures; `bench/drift_gpu.py` sweeps it.
MAX_BLOCK_F = 64
FINALIZE_BLOCK_G = 32
_LANES = 16  # count lanes per launch: finite + 15 edges (_drift_jit.LANES_PER_LAUNCH)


class LaunchConfig(NamedTuple):
    block_f: int
    n_fblocks: int
    block_rows: int
    n_tiles: int
    programs: int
    block_c: int
    k_pad: int
    cat_hist: bool


def launch_config(F: int, C: int, rows: int, x: torch.Tensor | None = None, block_rows: int | None = None,
                  max_programs: int | None = None, cat_slots: int = 0, cat_mode: str = "auto",
                  on_gpu: bool | None = None) -> LaunchConfig:
    """Tile shape and grid of `drift_update_` (also what `aot` compiles, so the report is of the
    kernel that runs). `cat_slots`: the width of cat_counts (K_max + 1)."""
    gpu = on_gpu if on_gpu is not None else (x is not None and x.is_cuda and not _interpreted())
    fb = min(_pow2(max(F, 2)), MAX_BLOCK_F)
    n_fblocks = max(1, -(-F // fb)) if F else 1
    if block_rows is None:
        block_rows = max(16, TILE_VALUES // fb) if gpu else 256
    block_rows = _pow2(block_rows)
    n_tiles = -(-rows // block_rows)
    if max_programs is None:
        max_programs = _default_programs(x) if x is not None else 4
    programs = max(1, min(n_tiles, max_programs))
    block_c = _pow2(max(C, 2))
    k_pad = _pow2(max(cat_slots, 32))
    if cat_mode == "auto":
        cat_hist = block_c * k_pad <= CAT_HIST_MAX_CELLS
    elif cat_mode in ("hist", "atomic"):
        cat_hist = cat_mode == "hist"
    else:
        raise ValueError(f"cat_mode must be 'auto', 'hist' or 'atomic', got {cat_mode!r}")
    return LaunchConfig(fb, n_fblocks, block_rows, n_tiles, programs, block_c, k_pad, cat_hist)


@functools.lru_cache(maxsize=1)
def _jit():
    from loopserve.kernels import _drift_jit

    return _drift_jit


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@functools.lru_cache(maxsize=16)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _default_programs(x: torch.Tensor) -> int:
    if x.is_cuda and not _interpreted():
        return 4 * _sm_count(x.device.index if x.device.index is not None else torch.cuda.current_device())
    return 4


def _edges_f32(edges: torch.Tensor) -> torch.Tensor:
    """ceil32(e): the least float32 >= e, elementwise (e below -FLT_MAX -> -FLT_MAX, above FLT_MAX
    -> +inf, +-inf kept). Exact because float64 -> float32 rounds to nearest, so at most one
    nextafter step up is needed."""
    e32 = edges.to(torch.float32)
    low = e32.to(torch.float64) < edges
    return torch.where(low, torch.nextafter(e32, torch.full_like(e32, torch.inf)), e32).contiguous()


@functools.lru_cache(maxsize=16)
def _placeholders(device: torch.device):
    """One-element tensors the kernels get for the parts they skip (never read or written), made
    once per device so that a launch allocates only its scratch."""
    return (torch.zeros(1, dtype=torch.int32, device=device), torch.zeros(1, dtype=torch.int64, device=device),
            torch.zeros(1, dtype=torch.float64, device=device))


def _check_x(x: torch.Tensor):
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D [rows, cols], got shape {tuple(x.shape)}")
    if x.dtype not in SUPPORTED:
        raise ValueError(f"x must be float32, float64, int32 or int64, got {x.dtype}")
    if x.shape[0] >= 2**31:
        raise ValueError("at most 2**31 - 1 rows per call (per-program counts are int32)")


def _check_index(name: str, t: torch.Tensor, dim: int, dtype, device, shape=None, inner_contiguous=True):
    if t.dim() != dim or t.dtype != dtype or t.device != device:
        raise ValueError(f"{name} must be a {dim}-D {dtype} tensor on {device}, got {t.dim()}-D {t.dtype} on {t.device}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if inner_contiguous and t.dim() == 2 and t.shape[1] > 1 and t.stride(1) != 1:
        raise ValueError(f"{name} must be contiguous along its last dimension")
    if dim == 1 and t.numel() > 1 and t.stride(0) != 1:
        raise ValueError(f"{name} must be contiguous")


def _check_range(name: str, t: torch.Tensor, lo: int, hi: torch.Tensor | int):
    """Index values inside [lo, hi] (hi elementwise allowed); one device sync when on a GPU."""
    if t.numel() and (bool((t < lo).any()) or bool((t > hi).any())):
        raise ValueError(f"{name} has values outside [{lo}, {hi if isinstance(hi, int) else 'its bound'}]")


def drift_update_(x: torch.Tensor, *, numeric_cols=None, edges=None, n_edges=None, counts=None, missing=None,
                  sums=None, with_moments: bool = False, cat_cols=None, luts=None, lut_sizes=None, n_other=None,
                  cat_counts=None, cat_missing=None, edges_f32=None, check: bool = True,
                  block_rows: int | None = None, max_programs: int | None = None, num_warps: int = 4,
                  cat_mode: str = "auto", moments_into=None, maxnreg: int | None = None):
    """Every accumulator of one batch in one pass over x; returns the moments (or None).

    Numeric part (F features): `numeric_cols` int32 [F]; for bins also `edges` float64 [F, E_max]
    (sorted per row; entries past `n_edges[f]` are ignored), `n_edges` int32 [F], `counts` int64
    [F, E_max + 1] and `missing` int64 [F] (both += ); `sums` float64 [F, E_max + 1], laid out as
    `counts` (+= the sum of each bin's values, for Wasserstein-1; optional). `with_moments` returns (count, mean, m2,
    min, max) [F]. `edges_f32` may pass `_edges_f32(edges)` precomputed for fp32 batches.
    Categorical part (C columns): `cat_cols` int32 [C], `luts` int32 [C, L_max] (row c valid up to
    `lut_sizes[c]`, int32 [C]), `n_other` int32 [C] (K_c, the "other" slot), `cat_counts` int64
    [C, K_max + 1], `cat_missing` int64 [C] (both +=).
    `check` validates index ranges (one device sync on a GPU); the kernel never reads or writes out
    of bounds for valid index tensors. `cat_mode`: "auto", "hist" or "atomic".
    `maxnreg` caps the main kernel's registers per thread (more programs per SM; ptxas spills past
    what it needs), for the benchmark's sweep.
    `moments_into=(n int64 [F], planes float64 [4, F])`: running moments (mean, m2, min, max planes)
    the batch's are merged into in place, by the same launch (nothing is returned): a monitor's
    window then costs no extra launches (start from n = 0, mean = m2 = 0, min = +inf, max = -inf).
    """
    _check_x(x)
    dev = x.device
    rows, ncols = x.shape
    do_bins = edges is not None
    do_num = do_bins or with_moments
    do_cats = cat_cols is not None
    empty_i32, dummy_i64, dummy_f64 = _placeholders(dev)
    F = 0
    if do_num:
        _check_index("numeric_cols", numeric_cols, 1, torch.int32, dev)
        F = numeric_cols.shape[0]
        if check:
            _check_range("numeric_cols", numeric_cols, 0, ncols - 1)
    if do_bins:
        e_max = edges.shape[1] if edges.dim() == 2 else -1
        _check_index("edges", edges, 2, torch.float64, dev, (F, e_max))
        _check_index("n_edges", n_edges, 1, torch.int32, dev, (F,))
        _check_index("counts", counts, 2, torch.int64, dev, (F, e_max + 1))
        _check_index("missing", missing, 1, torch.int64, dev, (F,))
        if sums is not None:
            _check_index("sums", sums, 2, torch.float64, dev, (F, e_max + 1))
            if sums.stride() != counts.stride():
                raise ValueError("sums must be laid out as counts (the same strides)")
        if check:
            _check_range("n_edges", n_edges, 0, e_max)
            if e_max > 1:  # the cumulative counts rely on sorted edges
                real = torch.arange(1, e_max, device=dev)[None, :] < n_edges[:, None]
                if bool((real & (edges[:, 1:] < edges[:, :-1])).any()):
                    raise ValueError("edges must be sorted ascending within each feature's n_edges")
        if x.dtype == torch.float32:
            cmp_edges = edges_f32 if edges_f32 is not None else _edges_f32(edges)
            _check_index("edges_f32", cmp_edges, 2, torch.float32, dev, (F, e_max))
        else:
            cmp_edges = edges
    C = 0
    if do_cats:
        _check_index("cat_cols", cat_cols, 1, torch.int32, dev)
        C = cat_cols.shape[0]
        _check_index("luts", luts, 2, torch.int32, dev)
        if luts.shape[0] != C:
            raise ValueError(f"luts must have {C} rows, got {luts.shape[0]}")
        _check_index("lut_sizes", lut_sizes, 1, torch.int32, dev, (C,))
        _check_index("n_other", n_other, 1, torch.int32, dev, (C,))
        _check_index("cat_counts", cat_counts, 2, torch.int64, dev)
        _check_index("cat_missing", cat_missing, 1, torch.int64, dev, (C,))
        if cat_counts.shape[0] != C:
            raise ValueError(f"cat_counts must have {C} rows, got {cat_counts.shape[0]}")
        if check:
            _check_range("cat_cols", cat_cols, 0, ncols - 1)
            _check_range("lut_sizes", lut_sizes, 0, luts.shape[1])
            _check_range("n_other", n_other, 0, cat_counts.shape[1] - 1)
            if luts.numel():
                valid = torch.arange(luts.shape[1], device=dev)[None, :] < lut_sizes[:, None]
                bad = valid & ((luts < 0) | (luts > n_other[:, None]))
                if bool(bad.any()):
                    raise ValueError("luts has slots outside [0, K] for its column")
    if C == 0 and not do_num:
        return None

    cfg = launch_config(F, C, rows, x, block_rows, max_programs, cat_counts.shape[1] if do_cats else 0, cat_mode)
    fb, n_fblocks, block_rows, n_tiles, G = cfg.block_f, cfg.n_fblocks, cfg.block_rows, cfg.n_tiles, cfg.programs
    part_stride = n_fblocks * fb if do_num else 0
    if not do_bins:
        e_max = 0
    n_lanes = 1 + e_max
    # Per-program partials: lane counts int32 [n_lanes, G, part_stride]; moments fp64 [5, G, part_stride].
    pc = torch.empty((n_lanes, G, part_stride) if do_num else 1, dtype=torch.int32, device=dev)
    pf = torch.empty((5, G, part_stride) if with_moments else 1, dtype=torch.float64, device=dev)
    do_sums = do_bins and sums is not None
    ps = torch.empty((n_lanes, G, part_stride) if do_sums else 1, dtype=torch.float64, device=dev)
    cat = (cat_cols, C, luts if luts.numel() else empty_i32, luts.stride(0), lut_sizes, n_other, cat_counts,
           cat_counts.stride(0), cat_missing) if C else (empty_i32, 0, empty_i32, 0, empty_i32, empty_i32,
                                                          dummy_i64, 0, dummy_i64)
    if n_tiles:
        # Edges in windows of LANES_PER_LAUNCH - 1: every launch reads x again, so only profiles with
        # more than 16 bins pay for a second pass (the first launch does the moments and categories).
        e0 = 0
        while True:
            e_launch = min(e_max - e0, _LANES - 1)
            first = e0 == 0
            _jit().drift_kernel[(G, n_fblocks)](
                x, rows, x.stride(0), x.stride(1), n_tiles,
                numeric_cols if do_num else empty_i32, F, cmp_edges if do_bins else dummy_f64,
                cmp_edges.stride(0) if do_bins else 0, n_edges if do_bins else empty_i32, e0, e0, e_launch + 1,
                pc, G * part_stride, pf, part_stride, G * part_stride, ps,
                *(cat if first else (empty_i32, 0, empty_i32, 0, empty_i32, empty_i32, dummy_i64, 0, dummy_i64)),
                E_LAUNCH=e_launch, BLOCK_R=block_rows, BLOCK_F=fb, BLOCK_C=cfg.block_c, K_PAD=cfg.k_pad,
                DO_BINS=do_bins, DO_MOMENTS=with_moments and first, DO_CATS=C > 0 and first,
                CMP_F32=x.dtype == torch.float32, CAT_FLOAT=x.is_floating_point(), CAT_HIST=cfg.cat_hist,
                DO_SUMS=do_sums, num_warps=num_warps, **({"maxnreg": maxnreg} if maxnreg else {}),
            )
            e0 += e_launch
            if e0 >= e_max:
                break
    if not do_num:
        return None
    if moments_into is not None:
        out_n, out_f = moments_into
        _check_index("moments_into[0]", out_n, 1, torch.int64, dev, (F,))
        _check_index("moments_into[1]", out_f, 2, torch.float64, dev, (4, F))
        if not out_f.is_contiguous():
            raise ValueError("moments_into[1] must be contiguous")
    else:
        out_n = torch.empty(F, dtype=torch.int64, device=dev) if with_moments else dummy_i64
        out_f = torch.empty((4, F), dtype=torch.float64, device=dev) if with_moments else dummy_f64
    if F:
        _jit().drift_finalize[(n_fblocks, n_lanes if do_bins else 1)](
            pc, G * part_stride, pf, G if n_tiles else 0, F, rows, part_stride, G * part_stride, e_max,
            counts if do_bins else dummy_i64, counts.stride(0) if do_bins else 0, missing if do_bins else dummy_i64,
            out_n, out_f, ps, sums if do_sums else dummy_f64, cmp_edges if do_sums else dummy_f64,
            cmp_edges.stride(0) if do_sums else 0, n_edges if do_sums else empty_i32,
            BLOCK_G=FINALIZE_BLOCK_G, BLOCK_F=fb, DO_BINS=do_bins, DO_MOMENTS=with_moments,
            MERGE=moments_into is not None, DO_SUMS=do_sums, num_warps=num_warps)
    if not with_moments or moments_into is not None:
        return None
    return out_n, out_f[0], out_f[1], out_f[2], out_f[3]


def bin_counts_(x, numeric_cols, edges, n_edges, counts, missing, **kw) -> None:
    """counts[f, bin] += ..., missing[f] += ... for the batch (see the module docstring)."""
    drift_update_(x, numeric_cols=numeric_cols, edges=edges, n_edges=n_edges, counts=counts, missing=missing, **kw)


def moments(x, numeric_cols, **kw):
    """(count int64, mean, m2, min, max float64) [F] of the batch's finite values per feature."""
    return drift_update_(x, numeric_cols=numeric_cols, with_moments=True, **kw)


def category_counts_(x, col: int, lut, counts, missing, **kw) -> None:
    """counts[slot] += ... (counts int64 [K + 1], K = the "other" slot), missing[0] += ... for column col."""
    dev = x.device
    _check_index("lut", lut, 1, torch.int32, dev)
    _check_index("counts", counts, 1, torch.int64, dev)
    _check_index("missing", missing, 1, torch.int64, dev, (1,))
    k = counts.shape[0] - 1
    if k < 0:
        raise ValueError("counts must have K + 1 >= 1 entries")
    drift_update_(x, cat_cols=torch.tensor([col], dtype=torch.int32, device=dev), luts=lut.reshape(1, -1),
                  lut_sizes=torch.tensor([lut.shape[0]], dtype=torch.int32, device=dev),
                  n_other=torch.tensor([k], dtype=torch.int32, device=dev), cat_counts=counts.view(1, -1),
                  cat_missing=missing, **kw)
