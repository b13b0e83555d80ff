"""KllSketch after the update speed-up (wider level 0, network sort, merged runs): the rank
error bound over several distributions at n = 10^6, merging, exact min/max, byte-identical
serialization, determinism and robust deserialization."""

import numpy as np
import pytest

from loopserve._core import KllSketch

EPS = KllSketch.normalized_rank_error(200)
N = 1_000_000


def streams():
    rng = np.random.default_rng(11)
    yield "normal", rng.standard_normal(N)
    yield "lognormal", rng.lognormal(0.0, 2.0, N)
    yield "sorted", np.sort(rng.standard_normal(N))
    yield "reversed", np.sort(rng.standard_normal(N))[::-1].copy()
    yield "duplicates", rng.integers(0, 7, N).astype(float)
    yield "mostly one value", np.where(rng.random(N) < 0.9, 1.5, rng.standard_normal(N))
    yield "with infinities", np.concatenate([rng.standard_normal(N - 20), [np.inf] * 10, [-np.inf] * 10])


def max_rank_error(sketch, values):
    ordered = np.sort(values)
    probes = ordered[np.minimum((np.linspace(0.0, 1.0, 201) * len(ordered)).astype(int), len(ordered) - 1)]
    true = np.searchsorted(ordered, probes, side="right") / len(ordered)
    return max(abs(sketch.rank(v) - t) for v, t in zip(probes, true))


@pytest.mark.parametrize("name, values", list(streams()))
def test_rank_error_within_the_bound(name, values):
    sketch = KllSketch()
    sketch.update(values)
    assert sketch.count == len(values)
    assert sketch.min == values.min() and sketch.max == values.max()
    assert max_rank_error(sketch, values) <= EPS
    assert sketch.retained < 2_000


def test_merge_of_eight_keeps_the_bound():
    rng = np.random.default_rng(5)
    parts = [rng.normal(i * 0.4, 1.0 + i * 0.1, 125_000) for i in range(8)]
    sketches = []
    for i, part in enumerate(parts):
        s = KllSketch(seed=100 + i)
        s.update(part)
        sketches.append(s)
    merged = KllSketch.deserialize(sketches[0].serialize())
    for s in sketches[1:]:
        merged.merge(KllSketch.deserialize(s.serialize()))
    everything = np.concatenate(parts)
    assert merged.count == len(everything)
    assert merged.min == everything.min() and merged.max == everything.max()
    assert max_rank_error(merged, everything) <= EPS


def test_serialize_round_trip_is_exact_and_continues_identically():
    x = np.random.default_rng(9).standard_normal(300_000)
    a = KllSketch(seed=3)
    a.update(x[:200_000])
    blob = a.serialize()
    b = KllSketch.deserialize(blob)
    assert b.serialize() == blob
    probes = np.linspace(-3, 3, 61)
    assert [a.rank(v) for v in probes] == [b.rank(v) for v in probes]
    assert (a.count, a.retained, a.min, a.max) == (b.count, b.retained, b.min, b.max)
    a.update(x[200_000:])
    b.update(x[200_000:])
    assert a.serialize() == b.serialize(), "a round trip keeps the random state and the sorted runs"


def test_deterministic_for_a_seed_and_nan_skipped():
    x = np.random.default_rng(1).standard_normal(50_000)
    with_nan = x.copy()
    with_nan[::7] = np.nan
    a, b = KllSketch(seed=42), KllSketch(seed=42)
    a.update(with_nan)
    b.update(with_nan[~np.isnan(with_nan)])
    assert a.serialize() == b.serialize()
    assert a.count == np.count_nonzero(~np.isnan(with_nan))


def test_corrupt_bytes_are_refused():
    s = KllSketch()
    s.update(np.random.default_rng(4).standard_normal(20_000))
    blob = s.serialize()
    for cut in range(0, len(blob), 37):
        with pytest.raises(ValueError):
            KllSketch.deserialize(blob[:cut])
    # An item that is NaN, or outside [min, max], is corrupt (merging relies on an order).
    header = 1 + 2 + 8 + 8 + 8 + 8 + 4 + 4  # format, k, n, min, max, rng, depth, level 0's size
    for bad in (np.nan, 1e300):
        broken = bytearray(blob)
        broken[header : header + 8] = np.float64(bad).tobytes()
        with pytest.raises(ValueError, match="corrupt item"):
            KllSketch.deserialize(bytes(broken))
