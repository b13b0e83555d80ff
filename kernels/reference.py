"""Pure-torch versions of the drift kernels' semantics, and `merge_moments`.

They run on any device (the benchmark uses them as the torch-native path: searchsorted on fp64 +
one bincount for all features) and are the readable statement of what the kernels compute:

- bin counts: v as float64; not finite -> missing; else bin = #{real edges e : e <= v}
  (numpy `searchsorted(edges, v, side="right")`).
- moments over the finite values: count, mean, m2 = sum (v - mean)^2 (two-pass, float64), min, max;
  count 0 gives mean 0, m2 0, min +inf, max -inf.
- category counts: code = the value (floats: non-finite -> missing, else truncated toward zero);
  code < 0 -> missing; slot = lut[code] if code < L else K.
"""

from __future__ import annotations

import torch

Moments = tuple  # (count int64 [F], mean, m2, min, max float64 [F])


def _columns64(x: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    return x[:, cols.long()].to(torch.float64).T  # [F, rows]


def bin_counts_reference(x, numeric_cols, edges, n_edges):
    """(counts int64 [F, E_max + 1], missing int64 [F]) of one batch, fresh (not accumulated)."""
    F, e_max = edges.shape
    v = _columns64(x, numeric_cols.to(x.device))
    real = torch.arange(e_max, device=edges.device)[None, :] < n_edges.to(edges.device).long()[:, None]
    bounds = torch.where(real, edges.to(torch.float64), torch.inf).to(x.device).contiguous()
    finite = torch.isfinite(v)
    bins = torch.searchsorted(bounds, torch.where(finite, v, 0.0).contiguous(), right=True)
    flat = bins + torch.arange(F, device=x.device)[:, None] * (e_max + 1)
    flat = torch.where(finite, flat, F * (e_max + 1))  # one dump slot for the missing
    counts = torch.bincount(flat.reshape(-1), minlength=F * (e_max + 1) + 1)[:-1].reshape(F, e_max + 1)
    return counts, (~finite).sum(dim=1)


def moments_reference(x, numeric_cols) -> Moments:
    v = _columns64(x, numeric_cols.to(x.device))
    finite = torch.isfinite(v)
    count = finite.sum(dim=1)
    mean = torch.where(finite, v, 0.0).sum(dim=1) / count.clamp(min=1)
    m2 = torch.where(finite, v - mean[:, None], 0.0).square().sum(dim=1)
    vmin = torch.where(finite, v, torch.inf).amin(dim=1) if v.shape[1] else torch.full_like(mean, torch.inf)
    vmax = torch.where(finite, v, -torch.inf).amax(dim=1) if v.shape[1] else torch.full_like(mean, -torch.inf)
    return count, mean, m2, vmin, vmax


def category_counts_reference(x, col: int, lut, n_other: int):
    """(counts int64 [K + 1], missing int64 [1]) of column `col`; K = n_other."""
    v = x[:, col]
    if v.is_floating_point():
        v64 = v.to(torch.float64)
        ok = torch.isfinite(v64) & (v64 > -1)
        code = torch.where(ok, v64, 0.0).clamp(max=float(lut.numel())).to(torch.int64)
    else:
        code = v.to(torch.int64)
        ok = code >= 0
    lut = lut.to(x.device).long()
    in_lut = ok & (code < lut.numel())
    slot = torch.where(in_lut, lut[torch.where(in_lut, code, 0)] if lut.numel() else code, n_other)
    counts = torch.bincount(slot[ok], minlength=n_other + 1)
    return counts, (~ok).sum().reshape(1)


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Chan's parallel formula: the moments of A ∪ B from those of A and of B (elementwise over F)."""
    na, ma, m2a, mina, maxa = a
    nb, mb, m2b, minb, maxb = b
    n = na + nb
    nf = n.to(torch.float64).clamp(min=1)
    naf, nbf = na.to(torch.float64), nb.to(torch.float64)
    delta = mb - ma
    mean = torch.where(n > 0, ma + delta * (nbf / nf), 0.0)
    m2 = m2a + m2b + delta * delta * (naf * nbf / nf)
    return n, mean, m2, torch.minimum(mina, minb), torch.maximum(maxa, maxb)
