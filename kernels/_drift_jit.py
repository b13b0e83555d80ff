"""The Triton kernels behind `loopserve.kernels.drift` (imported lazily: this module needs triton).

`drift_kernel` reads a batch once and does any of three jobs chosen by constexpr flags (numeric
bin counts, moments, category counts); each program writes its partial counts and moments to a
scratch row, and `drift_finalize` reduces those rows once and adds them to the accumulators.
The launch wrappers are in `drift.py`; what each choice did to registers and spills is in the
README ("Drift kernels on the GPU").

Register budget (sm_90, 4 warps, a [BLOCK_R, BLOCK_F] tile of 512 values: 4 per thread):
- bin counts are cumulative counts ge_e = #{finite v : edge_e <= v}, kept per element of the
  tile (no cross-thread reduction per tile) and packed four to an int32, 8 bits each: lane 0
  counts the finite values, lane 1 + e the values >= edge e. 16 lanes (4 words, 15 edges) cost 4
  registers per element; a word is emptied into the per-program totals every 255 tiles, before
  any 8-bit lane can overflow.
- bin sums (for Wasserstein-1, optional): per lane the sum of v - the feature's middle edge over
  the values the lane counts, reduced per tile over the rows ([rows, features, 16 lanes] masked
  sums, in the compare type) into float64 [features, 16] per program: one reduction per tile,
  which the counts avoid, so it costs registers (see the README) but not a second pass.
- moments are shifted sums per element (sum of d and of d^2, d = v - pivot, float64) with
  min/max in the input's compare type; mean and m2 of the program come from them once, at the
  end. The pivot is the feature's first finite value in the batch's first tile (the same in
  every program), so the sums cancel only at the data's spread, not its magnitude.
"""

from __future__ import annotations

import triton
import triton.language as tl

LANES_PER_LAUNCH = 16  # lane 0: finite values; lanes 1..15: edges e0 .. e0 + 14


@triton.jit
def _lanes(word, lane_off, W: tl.constexpr):
    """[BLOCK_F, 16] int32 additions from one packed word [BLOCK_R, BLOCK_F]: lanes 4W .. 4W + 3."""
    out = tl.zeros([word.shape[1], 16], dtype=tl.int32)
    for k in tl.static_range(4):
        cnt = tl.sum((word >> (8 * k)) & 255, axis=0)
        out += cnt[:, None] * (lane_off == 4 * W + k).to(tl.int32)[None, :]
    return out


@triton.jit
def _ge(fin, vc, edges_ptr, f_off, edges_stride, e0, nedge, fmask, E: tl.constexpr, E_LAUNCH: tl.constexpr):
    """1 where v >= edge e0 + E (a finite value; padding edges read as +inf, never reached)."""
    INF: tl.constexpr = float("inf")
    if E < E_LAUNCH:
        edge = tl.load(edges_ptr + f_off * edges_stride + (e0 + E), mask=fmask & (e0 + E < nedge), other=INF)
        return (fin & (vc >= edge[None, :])).to(tl.int32)
    else:
        return tl.zeros(fin.shape, dtype=tl.int32)


@triton.jit
def _word(fin, vc, edges_ptr, f_off, edges_stride, e0, nedge, fmask, W: tl.constexpr, E_LAUNCH: tl.constexpr):
    """Packed word W of one tile: lanes 4W .. 4W + 3 (lane 0 is the finite count, lane 1 + e edge e)."""
    if W == 0:
        w = fin.to(tl.int32)
    else:
        w = _ge(fin, vc, edges_ptr, f_off, edges_stride, e0, nedge, fmask, 4 * W - 1, E_LAUNCH)
    for k in tl.static_range(1, 4):
        w += _ge(fin, vc, edges_ptr, f_off, edges_stride, e0, nedge, fmask, 4 * W + k - 1, E_LAUNCH) << (8 * k)
    return w


@triton.jit
def drift_kernel(
    x_ptr, n_rows, stride_r, stride_c, n_tiles,
    # numeric features
    ncols_ptr, F, edges_ptr, edges_stride, nedges_ptr, e0, lane_base, n_lanes, pc_ptr, pc_plane,
    pf_ptr, part_stride, part_plane, ps_ptr,
    # categorical columns
    ccols_ptr, C, lut_ptr, lut_stride, lut_len_ptr, other_ptr, ccounts_ptr, ccounts_stride, cmissing_ptr,
    E_LAUNCH: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_F: tl.constexpr,
    BLOCK_C: tl.constexpr, K_PAD: tl.constexpr,
    DO_BINS: tl.constexpr, DO_MOMENTS: tl.constexpr, DO_CATS: tl.constexpr,
    CMP_F32: tl.constexpr, CAT_FLOAT: tl.constexpr, CAT_HIST: tl.constexpr, DO_SUMS: tl.constexpr = False,
):
    # Grid: (programs over row tiles, feature blocks). Each program walks row tiles pid, pid+G, ...
    # Numeric counts (finite, >= each edge) go to pc_ptr[lane, pid, f] for lanes lane_base ..
    # lane_base + n_lanes - 1 of this launch (this launch's edges are e0 .. e0 + E_LAUNCH - 1);
    # moments to pf_ptr[plane, pid, f]. No atomics for either: `drift_finalize` reduces them.
    pid = tl.program_id(0)
    G = tl.num_programs(0)
    pid_f = tl.program_id(1)
    r_off = tl.arange(0, BLOCK_R)
    INF: tl.constexpr = float("inf")
    NW: tl.constexpr = (E_LAUNCH + 4) // 4  # packed words this launch needs (lane 0 + E_LAUNCH lanes)

    if DO_BINS or DO_MOMENTS:
        f_off = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
        fmask = f_off < F
        col_off = tl.load(ncols_ptr + f_off, mask=fmask, other=0).to(tl.int64) * stride_c
        lane_off = tl.arange(0, 16)
        totals = tl.zeros([BLOCK_F, 16], dtype=tl.int32)  # lanes, emptied from the words
        w0 = tl.zeros([BLOCK_R, BLOCK_F], dtype=tl.int32)
        w1 = tl.zeros([BLOCK_R, BLOCK_F], dtype=tl.int32)
        w2 = tl.zeros([BLOCK_R, BLOCK_F], dtype=tl.int32)
        w3 = tl.zeros([BLOCK_R, BLOCK_F], dtype=tl.int32)
        nedge = tl.load(nedges_ptr + f_off, mask=fmask, other=0)
    if DO_SUMS:
        # Bin sums: per lane (0: every finite value, 1 + e: those >= edge e) the sum of d = v - the
        # feature's middle edge (as the native accumulator: the difference stays at the value's own
        # distance from the median), per tile in the compare type, across tiles in float64.
        spivot = tl.load(edges_ptr + f_off * edges_stride + nedge // 2, mask=fmask & (nedge > 0), other=0)
        le = lane_off[None, :] - 1 + e0 + f_off[:, None] * 0  # the edge of each lane
        lane_real = (lane_off[None, :] >= 1) & (lane_off[None, :] - 1 < E_LAUNCH) & (le < nedge[:, None])
        lane_edge = tl.load(edges_ptr + f_off[:, None] * edges_stride + le, mask=fmask[:, None] & lane_real,
                            other=INF)
        lane_edge = tl.where(lane_off[None, :] == 0, -INF, lane_edge)
        ssum = tl.zeros([BLOCK_F, 16], dtype=tl.float64)
    if DO_MOMENTS:
        # The pivot: the first finite value of tile 0 per feature (0 when it has none).
        m0 = (r_off < n_rows)[:, None] & fmask[None, :]
        t0 = tl.load(x_ptr + r_off.to(tl.int64)[:, None] * stride_r + col_off[None, :], mask=m0, other=0)
        t0 = t0.to(tl.float64)
        fin0 = m0 & (t0 == t0) & (tl.abs(t0) < INF)
        first = tl.min(tl.where(fin0, r_off[:, None], BLOCK_R), axis=0)
        pivot = tl.sum(tl.where(fin0 & (r_off[:, None] == first[None, :]), t0, 0.0), axis=0)
        s1 = tl.zeros([BLOCK_R, BLOCK_F], dtype=tl.float64)
        s2 = tl.zeros([BLOCK_R, BLOCK_F], dtype=tl.float64)
        if CMP_F32:
            run_min = tl.full([BLOCK_R, BLOCK_F], INF, dtype=tl.float32)
            run_max = tl.full([BLOCK_R, BLOCK_F], -INF, dtype=tl.float32)
        else:
            run_min = tl.full([BLOCK_R, BLOCK_F], INF, dtype=tl.float64)
            run_max = tl.full([BLOCK_R, BLOCK_F], -INF, dtype=tl.float64)
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

    # The packed 8-bit lanes are emptied into `totals` every 255 tiles, before any can overflow
    # (a tile adds at most 1 to each lane of each element), and once after the last tile.
    k = 0
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
            if DO_BINS:
                w0 += _word(fin, vc, edges_ptr, f_off, edges_stride, e0, nedge, fmask, 0, E_LAUNCH)
                if NW > 1:
                    w1 += _word(fin, vc, edges_ptr, f_off, edges_stride, e0, nedge, fmask, 1, E_LAUNCH)
                if NW > 2:
                    w2 += _word(fin, vc, edges_ptr, f_off, edges_stride, e0, nedge, fmask, 2, E_LAUNCH)
                if NW > 3:
                    w3 += _word(fin, vc, edges_ptr, f_off, edges_stride, e0, nedge, fmask, 3, E_LAUNCH)
            else:
                w0 += fin.to(tl.int32)
            if DO_SUMS:
                d = tl.where(fin, vc - spivot[None, :], 0.0)
                ge = vc[:, :, None] >= lane_edge[None, :, :]
                ssum += tl.sum(tl.where(ge, d[:, :, None], 0.0), axis=0).to(tl.float64)
            if E_LAUNCH > 0:  # with lane 0 alone, w0 is a plain count that cannot overflow
                k += 1
                if k == 255:  # emptied before an 8-bit lane can overflow
                    k = 0
                    totals += _lanes(w0, lane_off, 0)
                    w0 = tl.zeros([BLOCK_R, BLOCK_F], dtype=tl.int32)
                    if NW > 1:
                        totals += _lanes(w1, lane_off, 1)
                        w1 = tl.zeros([BLOCK_R, BLOCK_F], dtype=tl.int32)
                    if NW > 2:
                        totals += _lanes(w2, lane_off, 2)
                        w2 = tl.zeros([BLOCK_R, BLOCK_F], dtype=tl.int32)
                    if NW > 3:
                        totals += _lanes(w3, lane_off, 3)
                        w3 = tl.zeros([BLOCK_R, BLOCK_F], dtype=tl.int32)

        if DO_MOMENTS:
            d = tl.where(fin, vc.to(tl.float64) - pivot[None, :], 0.0)
            s1 += d
            s2 += d * d
            run_min = tl.minimum(run_min, tl.where(fin, vc, INF))
            run_max = tl.maximum(run_max, tl.where(fin, vc, -INF))

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
    if DO_BINS or DO_MOMENTS:
        if E_LAUNCH > 0:
            totals += _lanes(w0, lane_off, 0)
        else:
            totals += tl.sum(w0, axis=0)[:, None] * (lane_off == 0).to(tl.int32)[None, :]
        if NW > 1:
            totals += _lanes(w1, lane_off, 1)
        if NW > 2:
            totals += _lanes(w2, lane_off, 2)
        if NW > 3:
            totals += _lanes(w3, lane_off, 3)
        # Lane 0 (finite values) is written by the launch whose lane_base is 0 only.
        lane_dst = tl.where(lane_off == 0, 0, lane_base + lane_off)
        lmask = (lane_off < n_lanes) & ((lane_off > 0) | (lane_off + lane_base == 0))
        p = lane_dst[None, :].to(tl.int64) * pc_plane + pid.to(tl.int64) * part_stride + f_off[:, None]
        tl.store(pc_ptr + p, totals, mask=fmask[:, None] & lmask[None, :])
        if DO_SUMS:  # the same layout as the counts: lane, program, feature
            tl.store(ps_ptr + p, ssum, mask=fmask[:, None] & lmask[None, :])
    if DO_MOMENTS:
        # Partials per program, relative to the pivot; `drift_finalize` merges them.
        nt = tl.sum(tl.where(lane_off == 0, totals, 0), axis=1).to(tl.float64)
        t1 = tl.sum(s1, axis=0)
        t2 = tl.sum(s2, axis=0)
        mean = t1 / tl.maximum(nt, 1.0)
        m2 = tl.maximum(t2 - t1 * mean, 0.0)
        p = pid.to(tl.int64) * part_stride + f_off
        tl.store(pf_ptr + p, mean, mask=fmask)
        tl.store(pf_ptr + part_plane + p, m2, mask=fmask)
        tl.store(pf_ptr + 2 * part_plane + p, tl.min(run_min, axis=0).to(tl.float64), mask=fmask)
        tl.store(pf_ptr + 3 * part_plane + p, tl.max(run_max, axis=0).to(tl.float64), mask=fmask)
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
def _lane_sum(pc_ptr, pc_plane, lane, G, part_stride, f_off, fmask, BLOCK_G: tl.constexpr,
              DTYPE: tl.constexpr = tl.int64):
    """sum over the G programs of lane `lane` [BLOCK_F] (int64 counts, or float64 sums)."""
    acc = tl.zeros([BLOCK_G, f_off.shape[0]], dtype=DTYPE)
    for g0 in range(0, G, BLOCK_G):
        g = g0 + tl.arange(0, BLOCK_G)
        p = lane.to(tl.int64) * pc_plane + g[:, None].to(tl.int64) * part_stride + f_off[None, :]
        acc += tl.load(pc_ptr + p, mask=(g < G)[:, None] & fmask[None, :], other=0).to(DTYPE)
    return tl.sum(acc, axis=0)


@triton.jit
def drift_finalize(pc_ptr, pc_plane, pf_ptr, G, F, n_rows, part_stride, part_plane, e_max,
                   counts_ptr, counts_stride, missing_ptr, out_n_ptr, out_f_ptr,
                   ps_ptr, sums_ptr, edges_ptr, edges_stride, nedges_ptr,
                   BLOCK_G: tl.constexpr, BLOCK_F: tl.constexpr, DO_BINS: tl.constexpr, DO_MOMENTS: tl.constexpr,
                   MERGE: tl.constexpr, DO_SUMS: tl.constexpr = False):
    """Reduces G programs' partials once per batch. Grid: (feature blocks, e_max + 1 lanes).

    Counts: lane 0 = finite values, lane 1 + e = finite values >= edge e (pc_ptr[lane, g, f]);
    program (., b) adds lane b - lane b+1 (lane e_max + 1 = 0) to bin b, and program (., 0)
    adds n_rows - finite to missing: plain read-modify-writes, each cell has one owner.
    Moments (program (., 0)): per chunk of BLOCK_G partials the exact k-way form (mean = sum
    n_i mean_i / N, m2 = sum m2_i + sum n_i (mean_i - mean)^2, all terms >= 0), chunks into the
    running result with Chan's pairwise formula; partial means are of v - pivot (plane 4, the
    same in every program), added back at the end. Outputs: n int64 [F]; mean, m2, min, max fp64
    planes [4, F]; with MERGE they hold running moments, and the batch's are merged into them.
    Sums (DO_SUMS): lane sums of v - pivot (ps_ptr, laid out as the counts); bin b gets lane b -
    lane b+1 plus its count times the pivot (the feature's middle edge, read as the main kernel
    read it), added to sums_ptr [F, e_max + 1] (float64)."""
    INF: tl.constexpr = float("inf")
    f_off = tl.program_id(0) * BLOCK_F + tl.arange(0, BLOCK_F)
    fmask = f_off < F
    b = tl.program_id(1)
    lane_b = _lane_sum(pc_ptr, pc_plane, b, G, part_stride, f_off, fmask, BLOCK_G)
    if DO_BINS:
        lane_next = _lane_sum(pc_ptr, pc_plane, b + 1, G, part_stride, f_off, fmask & (f_off * 0 + b < e_max), BLOCK_G)
        cptr = counts_ptr + f_off.to(tl.int64) * counts_stride + b
        tl.store(cptr, tl.load(cptr, mask=fmask, other=0) + lane_b - lane_next, mask=fmask)
        tl.store(missing_ptr + f_off, tl.load(missing_ptr + f_off, mask=fmask, other=0) + (n_rows - lane_b),
                 mask=fmask & (f_off * 0 + b == 0))
        if DO_SUMS:
            nedge = tl.load(nedges_ptr + f_off, mask=fmask, other=0)
            spivot = tl.load(edges_ptr + f_off * edges_stride + nedge // 2, mask=fmask & (nedge > 0), other=0)
            s_b = _lane_sum(ps_ptr, pc_plane, b, G, part_stride, f_off, fmask, BLOCK_G, tl.float64)
            s_next = _lane_sum(ps_ptr, pc_plane, b + 1, G, part_stride, f_off, fmask & (f_off * 0 + b < e_max),
                               BLOCK_G, tl.float64)
            sptr = sums_ptr + f_off.to(tl.int64) * counts_stride + b
            add = (s_b - s_next) + (lane_b - lane_next).to(tl.float64) * spivot.to(tl.float64)
            tl.store(sptr, tl.load(sptr, mask=fmask, other=0.0) + add, mask=fmask)
    if DO_MOMENTS:
        if b == 0:
            n = tl.zeros([BLOCK_F], dtype=tl.float64)
            mean = tl.zeros([BLOCK_F], dtype=tl.float64)
            m2 = tl.zeros([BLOCK_F], dtype=tl.float64)
            mn = tl.full([BLOCK_F], INF, dtype=tl.float64)
            mx = tl.full([BLOCK_F], -INF, dtype=tl.float64)
            for g0 in range(0, G, BLOCK_G):
                g = g0 + tl.arange(0, BLOCK_G)
                m = (g < G)[:, None] & fmask[None, :]
                p = g[:, None].to(tl.int64) * part_stride + f_off[None, :]
                pn = tl.load(pc_ptr + p, mask=m, other=0).to(tl.float64)  # lane 0: finite values
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
            mean = tl.where(n > 0, mean + pivot, 0.0)
            if MERGE:  # into the running moments already there (Chan's formula), not over them
                old_n = tl.load(out_n_ptr + f_off, mask=fmask, other=0).to(tl.float64)
                old_mean = tl.load(out_f_ptr + f_off, mask=fmask, other=0.0)
                old_m2 = tl.load(out_f_ptr + F + f_off, mask=fmask, other=0.0)
                tot = old_n + n
                delta = mean - old_mean
                w = n / tl.maximum(tot, 1.0)
                m2 = old_m2 + m2 + delta * delta * old_n * w
                mean = tl.where(tot > 0, old_mean + delta * w, 0.0)
                lane_b += old_n.to(tl.int64)
                mn = tl.minimum(mn, tl.load(out_f_ptr + 2 * F + f_off, mask=fmask, other=INF))
                mx = tl.maximum(mx, tl.load(out_f_ptr + 3 * F + f_off, mask=fmask, other=-INF))
            tl.store(out_n_ptr + f_off, lane_b, mask=fmask)
            tl.store(out_f_ptr + f_off, mean, mask=fmask)
            tl.store(out_f_ptr + F + f_off, m2, mask=fmask)
            tl.store(out_f_ptr + 2 * F + f_off, mn, mask=fmask)
            tl.store(out_f_ptr + 3 * F + f_off, mx, mask=fmask)
