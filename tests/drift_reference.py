"""The drift accumulators' semantics in plain numpy, one feature at a time: the yardstick the Triton
kernels (tests/test_kernels.py) and the C++ accumulators are compared with.

All functions take numpy arrays (or anything `np.asarray` accepts, e.g. CPU torch tensors) and
return fresh results for one batch (nothing is accumulated).
"""

from __future__ import annotations

import numpy as np


def numpy_bin_counts(x, numeric_cols, edges, n_edges):
    """(counts int64 [F, E_max + 1], missing int64 [F]).

    Per feature f: v = x[:, numeric_cols[f]] as float64; not finite -> missing; else
    counts[f, searchsorted(edges[f, :n_edges[f]], v, side="right")] += 1.
    """
    x = np.asarray(x)
    edges = np.asarray(edges, dtype=np.float64)
    F, e_max = edges.shape
    counts = np.zeros((F, e_max + 1), dtype=np.int64)
    missing = np.zeros(F, dtype=np.int64)
    for f, (col, n) in enumerate(zip(np.asarray(numeric_cols), np.asarray(n_edges))):
        v = x[:, int(col)].astype(np.float64)
        finite = np.isfinite(v)
        missing[f] = int((~finite).sum())
        bins = np.searchsorted(edges[f, : int(n)], v[finite], side="right")
        counts[f, : int(n) + 1] = np.bincount(bins, minlength=int(n) + 1)
    return counts, missing


def numpy_moments(x, numeric_cols):
    """(count int64, mean, m2, min, max float64) arrays [F] over each feature's finite values
    (two-pass: mean first, then sum of squared deviations); count 0 gives 0, 0, +inf, -inf."""
    x = np.asarray(x)
    cols = np.asarray(numeric_cols)
    out = np.zeros((5, len(cols)), dtype=np.float64)
    count = np.zeros(len(cols), dtype=np.int64)
    for f, col in enumerate(cols):
        v = x[:, int(col)].astype(np.float64)
        v = v[np.isfinite(v)]
        count[f] = v.size
        if v.size:
            mean = v.mean()
            out[:, f] = (mean, ((v - mean) ** 2).sum(), v.min(), v.max(), 0)
        else:
            out[:, f] = (0.0, 0.0, np.inf, -np.inf, 0)
    return count, out[0], out[1], out[2], out[3]


def numpy_category_counts(x, col, lut, n_other):
    """(counts int64 [K + 1], missing int) of column `col`, K = n_other: code = the value (floats:
    non-finite -> missing, else truncated toward zero); code < 0 -> missing;
    slot = lut[code] if code < len(lut) else K."""
    v = np.asarray(x)[:, int(col)]
    lut = np.asarray(lut)
    counts = np.zeros(int(n_other) + 1, dtype=np.int64)
    missing = 0
    for value in v.tolist():
        if isinstance(value, float):
            if not np.isfinite(value):
                missing += 1
                continue
            code = int(value)  # truncates toward zero, exact for any float
        else:
            code = int(value)
        if code < 0:
            missing += 1
            continue
        counts[int(lut[code]) if code < len(lut) else int(n_other)] += 1
    return counts, missing
