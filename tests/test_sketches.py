"""The native streaming sketches (the drift monitor's accumulators) against numpy."""

import numpy as np
import pytest

from loopserve._core import KllSketch, MomentsSketch

EPS = KllSketch.normalized_rank_error(200)


def streams():
    rng = np.random.default_rng(7)
    yield "normal", rng.standard_normal(200_000)
    yield "uniform", rng.random(200_000)
    yield "exponential", rng.exponential(3.0, 200_000)
    yield "sorted", np.sort(rng.standard_normal(100_000))
    yield "reversed", np.sort(rng.standard_normal(100_000))[::-1].copy()
    yield "few distinct values", rng.integers(0, 5, 100_000).astype(float)


def max_rank_error(sketch, values):
    ordered = np.sort(values)
    worst = 0.0
    for q in np.linspace(0.0, 1.0, 101):
        v = ordered[min(int(q * len(ordered)), len(ordered) - 1)]
        true_rank = np.searchsorted(ordered, v, side="right") / len(ordered)
        worst = max(worst, abs(sketch.rank(v) - true_rank))
    return worst


@pytest.mark.parametrize("name, values", list(streams()))
def test_kll_rank_error_is_within_its_bound(name, values):
    sketch = KllSketch()
    sketch.update(values)
    assert sketch.count == len(values) and sketch.min == values.min() and sketch.max == values.max()
    assert max_rank_error(sketch, values) <= EPS
    assert sketch.retained < 2_000, "memory stays O(k log n)"
    ordered = np.sort(values)
    for q in (0.01, 0.25, 0.5, 0.75, 0.99):
        got = sketch.quantile(q)
        rank = np.searchsorted(ordered, got, side="right") / len(ordered)
        assert rank >= q - EPS and np.searchsorted(ordered, got, side="left") / len(ordered) <= q + EPS


def test_kll_merged_replicas_keep_the_bound_and_serialize():
    rng = np.random.default_rng(3)
    parts = [rng.normal(loc, 1.0, 50_000) for loc in (0.0, 0.5, 1.0, 3.0)]
    replicas = []
    for i, part in enumerate(parts):
        s = KllSketch(seed=i + 1)
        s.update(part)
        replicas.append(KllSketch.deserialize(s.serialize()))  # as shipped between replicas
    merged = replicas[0]
    for other in replicas[1:]:
        merged.merge(other)
    everything = np.concatenate(parts)
    assert merged.count == len(everything)
    assert max_rank_error(merged, everything) <= EPS
    again = KllSketch.deserialize(merged.serialize())
    assert [again.rank(v) for v in (-1.0, 0.0, 2.0)] == [merged.rank(v) for v in (-1.0, 0.0, 2.0)]


def test_kll_edge_cases():
    s = KllSketch()
    assert np.isnan(s.rank(0.0)) and np.isnan(s.quantile(0.5))
    s.update(np.array([np.nan, 2.0, np.nan]))
    assert s.count == 1 and s.quantile(0.5) == 2.0
    with pytest.raises(ValueError, match=r"quantile must be in \[0, 1\]"):
        s.quantile(1.5)
    with pytest.raises(ValueError, match="different k"):
        s.merge(KllSketch(k=100))
    with pytest.raises(ValueError, match="truncated"):
        KllSketch.deserialize(s.serialize()[:-3])
    with pytest.raises(ValueError, match="at least 8"):
        KllSketch(k=4)


def test_moments_match_numpy_merge_and_serialize():
    rng = np.random.default_rng(11)
    values = rng.normal(5.0, 2.0, 100_001)
    values[::1000] = np.nan
    whole = MomentsSketch()
    whole.update(values)
    clean = values[~np.isnan(values)]
    assert whole.count == len(clean) and whole.missing == 101
    assert whole.mean == pytest.approx(clean.mean(), rel=1e-12)
    assert whole.variance == pytest.approx(clean.var(), rel=1e-9)
    assert (whole.min, whole.max) == (clean.min(), clean.max())
    parts = [MomentsSketch() for _ in range(3)]
    for part, chunk in zip(parts, np.array_split(values, 3)):
        part.update(chunk)
    merged = MomentsSketch.deserialize(parts[0].serialize())
    merged.merge(parts[1])
    merged.merge(parts[2])
    assert merged.count == whole.count and merged.missing == whole.missing
    assert merged.mean == pytest.approx(whole.mean, rel=1e-12)
    assert merged.variance == pytest.approx(whole.variance, rel=1e-9)
    with pytest.raises(ValueError, match="trailing bytes"):
        MomentsSketch.deserialize(whole.serialize() + b"x")
    empty = MomentsSketch()
    assert np.isnan(empty.mean) and empty.count == 0
