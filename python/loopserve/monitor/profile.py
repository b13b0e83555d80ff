"""The reference profile: what a model's training data looked like, feature by feature.

A profile ships with a model version (`drift_profile.json` beside the model file) and is what
live traffic is compared with. Per numeric feature: quantile bin edges (the bins PSI, JS and the
binned chi-square use), the reference's counts and value sums in those bins (the sums for
Wasserstein-1), its PROFILE_EXTREMES smallest and largest values (Wasserstein-1's tails), a
grid of GRID_CELLS + 1 order statistics with their exact counts (KS and Wasserstein-1 against a
window that kept every value: loopserve/monitor/exact_window.py), moments, missing count and a
KLL quantile sketch (KS and Wasserstein-1 against a window that kept a sample). Per categorical feature: the top-k categories (one
slot each) and an "other" slot for the rest and for anything unseen later.

Missing means not finite: NaN and +-inf (and, for categoricals, a negative code or None).

Bin edges are interior cut points e_1 < ... < e_{B-1}; a value v falls in bin
#{e_i <= v} (numpy `searchsorted(edges, v, side="right")`), so bin 0 is (-inf, e_1) and the
last bin is [e_{B-1}, +inf). Edges are the reference's quantiles at i/B, with duplicates
dropped (a discrete feature gets fewer bins); a constant feature c gets edges [c, next(c)], so
its three bins are "below c", "exactly c" and "above c".
"""

from __future__ import annotations

import base64
import math
import os
from pathlib import Path
from typing import Sequence

import msgspec
import numpy as np

from loopserve.errors import LoopserveError

PROFILE_FILE = "drift_profile.json"
DEFAULT_BINS = 10
DEFAULT_TOP_K = 1000
PROFILE_EXTREMES = 2048  # reference values kept exactly at each end, for Wasserstein-1's tails
GRID_CELLS = 2048  # the reference's CDF between grid points is known to 1 / GRID_CELLS
QUANTILE_K = 400  # the KLL k of drift sketches (the native accumulators use the same)
MAX_CODE = 1 << 20  # integer category codes index a lookup table; larger codes are an error


class ProfileError(LoopserveError, ValueError):
    """Reference data that cannot make a profile (empty, all missing, bad categories)."""


class NumericProfile(msgspec.Struct, tag="numeric"):
    name: str
    column: int
    edges: list[float]
    counts: list[int]  # reference rows per bin: len(edges) + 1
    missing: int
    mean: float
    std: float
    min: float
    max: float
    sketch: str  # base64 of the reference KllSketch's serialization
    sums: list[float] = []  # the sum of the reference's values in each bin (empty in older profiles)
    # The reference's PROFILE_EXTREMES smallest and largest values, increasing (empty in older profiles)
    bottom: list[float] = []
    top: list[float] = []
    # Reference values the CDF is known at (reference_grid()), increasing, and how many reference
    # values lie below each and at or below each (empty in older profiles)
    grid: list[float] = []
    grid_below: list[int] = []
    grid_at_most: list[int] = []

    @property
    def count(self) -> int:
        return int(sum(self.counts))

    def kll(self):
        from loopserve._core import KllSketch

        return KllSketch.deserialize(base64.b64decode(self.sketch))


class CategoricalProfile(msgspec.Struct, tag="categorical"):
    name: str
    column: int
    categories: list[int | str]  # all ints or all strings; slot i holds categories[i]; slot len(categories) is "other"
    counts: list[int]  # reference rows per slot, "other" last
    missing: int

    @property
    def count(self) -> int:
        return int(sum(self.counts))

    def lookup_table(self) -> np.ndarray:
        """code -> slot for integer categories (codes not among the top-k map to "other")."""
        if not self.categories or not isinstance(self.categories[0], int):
            raise ProfileError(f"feature {self.name!r} has string categories: map them with slots_of()")
        lut = np.full(max(self.categories) + 1, len(self.categories), dtype=np.int32)
        lut[np.asarray(self.categories)] = np.arange(len(self.categories), dtype=np.int32)
        return lut

    def slots_of(self, values: Sequence) -> np.ndarray:
        """Slot per value: its category's slot, "other" for the rest, -1 for missing (None)."""
        index = {c: i for i, c in enumerate(self.categories)}
        other = len(self.categories)
        return np.array([-1 if v is None else index.get(v, other) for v in values], dtype=np.int64)


Feature = NumericProfile | CategoricalProfile


class ReferenceProfile(msgspec.Struct):
    rows: int
    features: list[Feature]
    outputs: list[Feature] = []  # the model's outputs on the reference data: prediction drift
    format: int = 1

    def save(self, path: str | os.PathLike) -> Path:
        """Write the profile as JSON; a directory gets `drift_profile.json` inside it."""
        path = Path(path)
        if path.is_dir():
            path = path / PROFILE_FILE
        path.write_bytes(msgspec.json.format(msgspec.json.encode(self), indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ReferenceProfile":
        path = Path(path)
        if path.is_dir():
            path = path / PROFILE_FILE
        try:
            return msgspec.json.decode(path.read_bytes(), type=cls)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as e:
            raise ProfileError(f"cannot read drift profile {path}: {e}") from None

    def feature(self, name: str) -> Feature:
        for f in (*self.features, *self.outputs):
            if f.name == name:
                return f
        raise KeyError(name)


def build_profile(X, feature_names: Sequence[str] | None = None, categorical: dict | Sequence | None = None,
                  outputs=None, output_names: Sequence[str] | None = None, bins: int = DEFAULT_BINS,
                  top_k: int = DEFAULT_TOP_K) -> ReferenceProfile:
    """Profile reference data.

    X: a 2-D array [rows, features] (the model's input tensor), or a dict of 1-D columns (then
    columns are numbered in the dict's order). `categorical` names the categorical features
    (a list, or a dict name -> cardinality; the cardinality is only checked). Categorical values
    are non-negative integer codes (in a float or int column) or, for dict input, strings.
    `outputs`: the model's outputs on X, profiled as numeric features for prediction drift.
    """
    columns, names = _columns(X, feature_names)
    if bins < 2:
        raise ProfileError(f"bins must be at least 2, got {bins}")
    categorical = set(categorical or ())
    unknown = categorical - set(names)
    if unknown:
        raise ProfileError(f"categorical features {sorted(unknown)} are not among the features {names}")
    rows = len(columns[0])
    if rows == 0:
        raise ProfileError("reference data has no rows: a profile needs at least one row per feature")
    features: list[Feature] = []
    for i, (name, values) in enumerate(zip(names, columns)):
        if name in categorical:
            features.append(_categorical(name, i, values, top_k))
        else:
            features.append(_numeric(name, i, values, bins))
    profiled_outputs: list[Feature] = []
    if outputs is not None:
        out_columns, out_names = _columns(outputs, output_names, default_prefix="output")
        if len(out_columns[0]) != rows:
            raise ProfileError(f"outputs have {len(out_columns[0])} rows, the features {rows}")
        profiled_outputs = [_numeric(n, i, v, bins) for i, (n, v) in enumerate(zip(out_names, out_columns))]
    return ReferenceProfile(rows=rows, features=features, outputs=profiled_outputs)


def _columns(X, names, default_prefix="f"):
    if isinstance(X, dict):
        cols = [np.asarray(v) if not _is_strings(v) else list(v) for v in X.values()]
        return cols, list(names or X.keys())
    X = np.asarray(X)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise ProfileError(f"reference data must be 2-D [rows, features], got shape {X.shape}")
    names = list(names) if names is not None else [f"{default_prefix}{i}" for i in range(X.shape[1])]
    if len(names) != X.shape[1]:
        raise ProfileError(f"{len(names)} feature names for {X.shape[1]} columns")
    if len(set(names)) != len(names):
        raise ProfileError(f"feature names repeat: {names}")
    return [X[:, i] for i in range(X.shape[1])], names


def _is_strings(values) -> bool:
    arr = np.asarray(values) if not isinstance(values, list) else None
    return arr is None or arr.dtype.kind in "OUS"


def _numeric(name: str, column: int, values, bins: int) -> NumericProfile:
    from loopserve._core import KllSketch

    values = np.asarray(values)
    if values.dtype.kind not in "fiub":
        raise ProfileError(f"feature {name!r} is numeric but holds {values.dtype} values; "
                           f"mark it categorical or pass numbers")
    v = values.astype(np.float64)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        raise ProfileError(f"feature {name!r} has no finite values in the reference data "
                           f"({v.size} rows, all NaN or infinite)")
    edges = np.unique(np.quantile(finite, np.arange(1, bins) / bins))
    if edges.size == 1 and finite.min() == finite.max():  # constant: below / exactly / above
        edges = np.array([edges[0], np.nextafter(edges[0], math.inf)])
    bins = np.searchsorted(edges, finite, side="right")
    counts = np.bincount(bins, minlength=edges.size + 1)
    # Summed as the accumulators sum (loopserve/monitor/wasserstein.py's tolerance assumes it):
    # distances from the middle edge, so a feature far from 0 (timestamps, ids) keeps its spread.
    pivot = edges[edges.size // 2]
    sums = np.bincount(bins, weights=finite - pivot, minlength=edges.size + 1) + counts * pivot
    sketch = KllSketch(QUANTILE_K)
    sketch.update(finite)
    ordered = np.sort(finite)
    kept = min(PROFILE_EXTREMES, ordered.size)
    grid = reference_grid(ordered)
    return NumericProfile(name=name, column=column, edges=edges.tolist(), counts=counts.tolist(),
                          missing=int(v.size - finite.size), mean=float(finite.mean()),
                          std=float(finite.std()), min=float(finite.min()), max=float(finite.max()),
                          sketch=base64.b64encode(sketch.serialize()).decode(), sums=sums.tolist(),
                          bottom=ordered[:kept].tolist(), top=ordered[ordered.size - kept:].tolist(),
                          grid=grid.tolist(), grid_below=np.searchsorted(ordered, grid, side="left").tolist(),
                          grid_at_most=np.searchsorted(ordered, grid, side="right").tolist())


def reference_grid(ordered: np.ndarray) -> np.ndarray:
    """The reference values a window's KS and Wasserstein-1 are held against
    (loopserve/monitor/exact_window.py): the order statistics at GRID_CELLS + 1 evenly spaced ranks,
    and, in a cell between two of them where a gap free of values takes more than a quarter of
    the cell (the empty stretch before a sentinel value, the valley between well-separated
    modes), the values on both sides of that gap: the CDF is flat, and known, across it, where a
    line through the cell would be off by up to a share of its width. Each cell between two of
    them holds at most 1 / GRID_CELLS of the reference. Increasing, distinct."""
    n = ordered.size
    grid = np.unique(ordered[np.unique(np.round(np.linspace(0, n - 1, GRID_CELLS + 1)).astype(np.int64))])
    below, at_most = np.searchsorted(ordered, grid, side="left"), np.searchsorted(ordered, grid, side="right")
    first, last = at_most[:-1], below[1:] - 1  # each cell's values strictly inside: ordered[first..last]
    quarter = np.diff(grid) / 4
    full = first <= last  # cells with values inside (the others are exact already)
    f, l, j = first[full], last[full], np.flatnonzero(full)
    knots = [grid, ordered[f[ordered[f] - grid[j] > quarter[j]]], ordered[l[grid[j + 1] - ordered[l] > quarter[j]]]]
    # The widest gap between two values inside each cell: gap i lies between ordered[i] and
    # ordered[i + 1], inside cell c when first[c] <= i < last[c].
    gaps = np.diff(ordered)
    i = np.arange(gaps.size)
    c = np.searchsorted(f, i, side="right") - 1
    inside = (c >= 0) & (i < l[np.maximum(c, 0)]) if f.size else np.zeros(i.size, dtype=bool)
    i, c = i[inside], c[inside]  # in order, so each cell's gaps are one run
    if i.size:
        starts = np.flatnonzero(np.diff(c, prepend=-1))
        widest_gap = np.maximum.reduceat(gaps[i], starts)
        is_widest = np.flatnonzero(gaps[i] == np.repeat(widest_gap, np.diff(starts, append=i.size)))
        cells, head = np.unique(c[is_widest], return_index=True)  # the first widest gap of each cell
        widest = i[is_widest[head]]
        wide = widest[gaps[widest] > quarter[j[cells]]]
        knots += [ordered[wide], ordered[wide + 1]]
    return np.unique(np.concatenate(knots))


def _categorical(name: str, column: int, values, top_k: int) -> CategoricalProfile:
    if isinstance(values, list) or np.asarray(values).dtype.kind in "OUS":
        present = [v for v in values if v is not None]
        missing = len(values) - len(present)
        cats, counts = np.unique(np.asarray(present, dtype=object).astype(str), return_counts=True) \
            if present else (np.array([]), np.array([], dtype=np.int64))
        cats = [str(c) for c in cats]
    else:
        v = np.asarray(values).astype(np.float64)
        # As the live accumulators read a code (truncated toward zero; below 0 after that, or not
        # finite: missing), so that (-1, 0) is not missing here and category 0 live: a non-integer.
        ok = np.isfinite(v) & (v > -1)
        codes = v[ok]
        if np.any(codes != np.floor(codes)):
            raise ProfileError(f"categorical feature {name!r} holds non-integer codes, e.g. "
                               f"{codes[codes != np.floor(codes)][0]}; expected codes 0, 1, 2, ...")
        if codes.size and codes.max() >= MAX_CODE:
            raise ProfileError(f"categorical feature {name!r} has code {int(codes.max())}; "
                               f"codes must be below {MAX_CODE}")
        missing = int(v.size - codes.size)
        cats, counts = np.unique(codes.astype(np.int64), return_counts=True)
        cats = [int(c) for c in cats]
    if not cats:
        raise ProfileError(f"categorical feature {name!r} has no values in the reference data (all missing)")
    order = np.argsort(-np.asarray(counts), kind="stable")
    kept, rest = order[:top_k], order[top_k:]
    return CategoricalProfile(name=name, column=column, categories=[cats[i] for i in kept],
                              counts=[int(counts[i]) for i in kept] + [int(np.sum(np.asarray(counts)[rest]))],
                              missing=missing)
