"""The Triton kernels behind `loopserve.kernels.drift` (imported lazily: this module needs triton).

One kernel, `drift_kernel`, reads a batch once and does any of three jobs chosen by constexpr flags
(numeric bin counts, per-program moments, category counts), so the monitor can update every
accumulator of a batch with one pass over `x`; `moments_finalize` merges the per-program moments.
Why each choice is made is written beside it; the launch wrappers are in `drift.py`.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def drift_kernel(
    x_ptr, n_rows, stride_r, stride_c, n_tiles,
    # numeric features
    ncols_ptr, F, edges_ptr, edges_stride, nedges_ptr, counts_ptr, counts_stride, missing_ptr,
    pn_ptr, pf_ptr, part_stride, part_plane,
    # categorical columns
    ccols_ptr, C, lut_ptr, lut_stride, lut_len_ptr, other_ptr, ccounts_ptr, ccounts_stride, cmissing_ptr,
    E_MAX: tl.constexpr, NB_PAD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_F: tl.constexpr,
    BLOCK_C: tl.constexpr, K_PAD: tl.constexpr,
    DO_BINS: tl.constexpr, DO_MOMENTS: tl.constexpr, DO_CATS: tl.constexpr,
    CMP_F32: tl.constexpr, CAT_FLOAT: tl.constexpr, CAT_HIST: tl.constexpr,
):
    # Grid: (programs over row tiles, feature blocks). Each program walks row tiles pid, pid+G, ...
    # and keeps its partial histograms / moments in registers, so global atomics happen once per
    # program and (bin, feature), never once per value.
    pid = tl.program_id(0)
    G = tl.num_programs(0)
    pid_f = tl.program_id(1)
    r_off = tl.arange(0, BLOCK_R)
    INF: tl.constexpr = float("inf")

    if DO_BINS or DO_MOMENTS:
        f_off = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
        fmask = f_off < F
        col_off = tl.load(ncols_ptr + f_off, mask=fmask, other=0).to(tl.int64) * stride_c
        nfin = tl.zeros([BLOCK_F], dtype=tl.int32)
    if DO_BINS:
        nedge = tl.load(nedges_ptr + f_off, mask=fmask, other=0)
        b_off = tl.arange(0, NB_PAD)
        hist = tl.zeros([BLOCK_F, NB_PAD], dtype=tl.int32)
        nmiss = tl.zeros([BLOCK_F], dtype=tl.int32)
    if DO_MOMENTS:
        # A common pivot per feature (row 0's value when finite, else 0): all sums are of v - pivot,
        # so tile means are compared at the data's spread, not its magnitude. Without it, a
        # feature whose |mean| / std is ~1e10 would lose ~1e-6 of m2 between tiles.
        v0 = tl.load(x_ptr + col_off, mask=fmask, other=0).to(tl.float64)  # launched only with rows
        pivot = tl.where((v0 == v0) & (tl.abs(v0) < INF), v0, 0.0)
        run_n = tl.zeros([BLOCK_F], dtype=tl.float64)
        run_mean = tl.zeros([BLOCK_F], dtype=tl.float64)
        run_m2 = tl.zeros([BLOCK_F], dtype=tl.float64)
        if CMP_F32:
            run_min = tl.full([BLOCK_F], INF, dtype=tl.float32)
            run_max = tl.full([BLOCK_F], -INF, dtype=tl.float32)
        else:
            run_min = tl.full([BLOCK_F], INF, dtype=tl.float64)
            run_max = tl.full([BLOCK_F], -INF, dtype=tl.float64)
    if DO_CATS:
        c_off = tl.arange(0, BLOCK_C)
        # Only the first feature block does the categorical columns (one program row per tile).
        c_eff = tl.where(pid_f == 0, C, 0)
        cmask = c_off < c_eff
        ccol_off = tl.load(ccols_ptr + c_off, mask=cmask, other=0).to(tl.int64) * stride_c
        llen = tl.load(lut_len_ptr + c_off, mask=cmask, other=0).to(tl.int64)
        oth = tl.load(other_ptr + c_off, mask=cmask, other=0)
        cmiss = tl.zeros([BLOCK_C], dtype=tl.int32)
        if CAT_HIST:
            chist = tl.zeros([BLOCK_C * K_PAD], dtype=tl.int32)

    for tile in range(pid, n_tiles, G):
        rows = tile * BLOCK_R + r_off
        rmask = rows < n_rows
        row_off = rows.to(tl.int64) * stride_r

        if DO_BINS or DO_MOMENTS:
            m2d = rmask[:, None] & fmask[None, :]
            v = tl.load(x_ptr + row_off[:, None] + col_off[None, :], mask=m2d, other=0)
            # fp32 input is compared in fp32 against edges rounded up to fp32 (exact, see drift.py);
            # everything else is compared in fp64, which is the semantics by construction.
            if CMP_F32:
                vc = v
            else:
                vc = v.to(tl.float64)
            fin = m2d & (vc == vc) & (tl.abs(vc) < INF)
            nf_t = tl.sum(fin.to(tl.int32), axis=0)
            nfin += nf_t

        if DO_BINS:
            nmiss += tl.sum((m2d & ~fin).to(tl.int32), axis=0)
            # Cumulative counts: ge_e = #{finite v : edge_e <= v}. Edges are sorted, so
            # bin(v) >= b  <=>  edge_{b-1} <= v, and counts[b] = ge_{b-1} - ge_b (ge_{-1} = #finite).
            # One compare and one add per (value, edge), no per-value bin index or scatter.
            # Padding edges (e >= n_edges[f]) load as +inf, which no finite value reaches.
            for e in tl.static_range(E_MAX):
                edge = tl.load(edges_ptr + f_off * edges_stride + e, mask=fmask & (e < nedge), other=INF)
                ge = tl.sum((fin & (vc >= edge[None, :])).to(tl.int32), axis=0)
                shift = (b_off == e + 1).to(tl.int32) - (b_off == e).to(tl.int32)
                hist += ge[:, None] * shift[None, :]

        if DO_MOMENTS:
            # Two passes over the tile held in registers (mean, then squared deviations) in fp64,
            # then Chan's merge into the program's running moments: as accurate as a two-pass over
            # the batch, with one read of x.
            v64 = vc.to(tl.float64) - pivot[None, :]
            nt = nf_t.to(tl.float64)
            mt = tl.sum(tl.where(fin, v64, 0.0), axis=0) / tl.maximum(nt, 1.0)
            d = tl.where(fin, v64 - mt[None, :], 0.0)
            m2t = tl.sum(d * d, axis=0)
            n_new = run_n + nt
            delta = mt - run_mean
            w = nt / tl.maximum(n_new, 1.0)
            run_mean = run_mean + delta * w
            run_m2 = run_m2 + m2t + delta * delta * run_n * w
            run_n = n_new
            run_min = tl.minimum(run_min, tl.min(tl.where(fin, vc, INF), axis=0))
            run_max = tl.maximum(run_max, tl.max(tl.where(fin, vc, -INF), axis=0))

        if DO_CATS:
            m2c = rmask[:, None] & cmask[None, :]
            cv = tl.load(x_ptr + row_off[:, None] + ccol_off[None, :], mask=m2c, other=0)
            if CAT_FLOAT:
                # trunc(v) >= 0 <=> v > -1 and trunc(v) < L <=> v < L (L an integer): the code is
                # converted only when it indexes the table, so huge floats never overflow int64.
                cf = cv.to(tl.float64)
                ok = m2c & (cf > -1.0) & (tl.abs(cf) < INF)
                in_lut = ok & (cf < llen.to(tl.float64)[None, :])
                code = tl.where(in_lut, cf, 0.0).to(tl.int64)
            else:
                ci = cv.to(tl.int64)
                ok = m2c & (ci >= 0)
                in_lut = ok & (ci < llen[None, :])
                code = tl.where(in_lut, ci, 0)
            slot = tl.load(lut_ptr + c_off[None, :].to(tl.int64) * lut_stride + code, mask=in_lut, other=0)
            slot = tl.where(in_lut, slot, oth[None, :])
            # A table entry outside [0, K] is a caller's bug; it is dropped, never written out of bounds.
            good = ok & (slot >= 0) & (slot <= oth[None, :])
            cmiss += tl.sum((m2c & ~ok).to(tl.int32), axis=0)
            if CAT_HIST:
                # Per-program histogram over (column, slot); tl.histogram counts in shared memory.
                idx = tl.where(good, c_off[None, :] * K_PAD + slot, 0)
                chist += tl.histogram(tl.reshape(idx, [BLOCK_R * BLOCK_C]), BLOCK_C * K_PAD,
                                      mask=tl.reshape(good, [BLOCK_R * BLOCK_C]))
            else:
                # Too many slots for a register histogram: one atomic per value (spread over K slots).
                ones = tl.full([BLOCK_R, BLOCK_C], 1, dtype=tl.int64)
                tl.atomic_add(ccounts_ptr + c_off[None, :].to(tl.int64) * ccounts_stride + slot, ones, mask=good)

    if DO_BINS:
        hist += nfin[:, None] * (b_off == 0).to(tl.int32)[None, :]
        hmask = fmask[:, None] & (b_off <= E_MAX)[None, :] & (hist != 0)
        tl.atomic_add(counts_ptr + f_off[:, None].to(tl.int64) * counts_stride + b_off[None, :],
                      hist.to(tl.int64), mask=hmask)
        tl.atomic_add(missing_ptr + f_off, nmiss.to(tl.int64), mask=fmask & (nmiss != 0))
    if DO_MOMENTS:
        # Partials per program; `moments_finalize` merges them (atomics cannot do Chan's merge).
        p = pid.to(tl.int64) * part_stride + f_off
        tl.store(pn_ptr + p, nfin.to(tl.int64), mask=fmask)
        tl.store(pf_ptr + p, run_mean, mask=fmask)
        tl.store(pf_ptr + part_plane + p, run_m2, mask=fmask)
        tl.store(pf_ptr + 2 * part_plane + p, run_min.to(tl.float64), mask=fmask)
        tl.store(pf_ptr + 3 * part_plane + p, run_max.to(tl.float64), mask=fmask)
        tl.store(pf_ptr + 4 * part_plane + p, pivot, mask=fmask)
    if DO_CATS:
        if CAT_HIST:
            h_off = tl.arange(0, BLOCK_C * K_PAD)
            hc = h_off // K_PAD
            hk = h_off % K_PAD
            tl.atomic_add(ccounts_ptr + hc.to(tl.int64) * ccounts_stride + hk, chist.to(tl.int64),
                          mask=(hc < c_eff) & (chist != 0))
        tl.atomic_add(cmissing_ptr + c_off, cmiss.to(tl.int64), mask=cmask & (cmiss != 0))


@triton.jit
def moments_finalize(pn_ptr, pf_ptr, G, F, part_stride, part_plane, out_n_ptr, out_f_ptr,
                     BLOCK_G: tl.constexpr, BLOCK_F: tl.constexpr):
    """Merges G programs' (n, mean, m2, min, max): per chunk of BLOCK_G partials the exact k-way
    form (mean = sum n_i mean_i / N, m2 = sum m2_i + sum n_i (mean_i - mean)^2, all terms >= 0),
    chunks into the running result with Chan's pairwise formula. The partial means are of
    v - pivot (one pivot per feature, the same in every program, stored in plane 4); the pivot is
    added back at the end. Outputs: n int64 [F]; mean, m2, min, max as fp64 planes [4, F]."""
    INF: tl.constexpr = float("inf")
    f_off = tl.program_id(0) * BLOCK_F + tl.arange(0, BLOCK_F)
    fmask = f_off < F
    n = tl.zeros([BLOCK_F], dtype=tl.float64)
    mean = tl.zeros([BLOCK_F], dtype=tl.float64)
    m2 = tl.zeros([BLOCK_F], dtype=tl.float64)
    mn = tl.full([BLOCK_F], INF, dtype=tl.float64)
    mx = tl.full([BLOCK_F], -INF, dtype=tl.float64)
    for g0 in range(0, G, BLOCK_G):
        g = g0 + tl.arange(0, BLOCK_G)
        m = (g < G)[:, None] & fmask[None, :]
        p = g[:, None].to(tl.int64) * part_stride + f_off[None, :]
        pn = tl.load(pn_ptr + p, mask=m, other=0).to(tl.float64)
        pmean = tl.load(pf_ptr + p, mask=m, other=0.0)
        pm2 = tl.load(pf_ptr + part_plane + p, mask=m, other=0.0)
        pmin = tl.load(pf_ptr + 2 * part_plane + p, mask=m, other=INF)
        pmax = tl.load(pf_ptr + 3 * part_plane + p, mask=m, other=-INF)
        cn = tl.sum(pn, axis=0)
        cmean = tl.sum(pn * pmean, axis=0) / tl.maximum(cn, 1.0)
        dev = tl.where(pn > 0, pmean - cmean[None, :], 0.0)
        cm2 = tl.sum(pm2, axis=0) + tl.sum(pn * dev * dev, axis=0)
        n_new = n + cn
        delta = cmean - mean
        w = cn / tl.maximum(n_new, 1.0)
        mean = mean + delta * w
        m2 = m2 + cm2 + delta * delta * n * w
        n = n_new
        mn = tl.minimum(mn, tl.min(pmin, axis=0))
        mx = tl.maximum(mx, tl.max(pmax, axis=0))
    pivot = tl.load(pf_ptr + 4 * part_plane + f_off, mask=f_off < tl.where(G > 0, F, 0), other=0.0)
    tl.store(out_n_ptr + f_off, n.to(tl.int64), mask=fmask)
    tl.store(out_f_ptr + f_off, tl.where(n > 0, mean + pivot, 0.0), mask=fmask)
    tl.store(out_f_ptr + F + f_off, m2, mask=fmask)
    tl.store(out_f_ptr + 2 * F + f_off, mn, mask=fmask)
    tl.store(out_f_ptr + 3 * F + f_off, mx, mask=fmask)
