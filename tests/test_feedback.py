"""Feedback in-process: the prediction record's bounds, joins and their answers (joined, unknown,
duplicate, expired, invalid), live metrics against numpy, labelled examples and the spill files.
Real models (Model.from_callable) through their batchers; the clock is injected."""

import msgspec
import numpy as np
import pytest

from conftest import vector_config
from loopserve import Model
from loopserve.config import FeedbackConfig
from loopserve.monitor.feedback import FeedbackStore
from loopserve.monitor.labelled import read_spill, spill_path
from loopserve.monitor.predictions import PredictionRecord


class Clock:
    def __init__(self, t=1_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def score_model(width=4, version=1, out_width=1, name="m", **feedback):
    """y = the first out_width columns of x: the score is whatever the test sends."""
    config = msgspec.structs.replace(vector_config(name=name, width=width, out_width=out_width, max_batch_size=64),
                                     feedback=FeedbackConfig(**feedback))
    return Model.from_callable(lambda inputs: {"y": inputs["x"][:, :out_width].copy()}, config, version)


def predict(store, model, request_id, x, group=None):
    """One request through the real batcher, recorded as the server records it."""
    outputs = model.infer_sync({"x": x})
    store.track(model).record(request_id, {"x": x}, outputs, {"group": group} if group is not None else None)
    return outputs["y"]


@pytest.fixture
def clock():
    return Clock()


def test_joins_answer_joined_unknown_duplicate_expired(clock):
    store = FeedbackStore(clock)
    with score_model(horizon_s=60) as model:
        predict(store, model, "a", np.array([[0.9, 0, 0, 0]], np.float32))
        predict(store, model, "b", np.array([[0.2, 0, 0, 0]], np.float32))
        clock.t += 30
        result = store.feedback("m", [("a", 1), ("nope", 0), ("a", 0)])
        assert (result.joined, result.unknown, result.duplicate) == (1, 1, 1)
        assert [(i.id, i.status, i.version) for i in result.items] == [
            ("a", "joined", "1"), ("nope", "unknown", None), ("a", "duplicate", "1")]
        # the first label wins: a = 1 against score 0.9, correct
        assert store.window_metrics("m", 1).cumulative.accuracy == 1.0
        clock.t += 31  # b is now past the 60 s horizon
        result = store.feedback("m", [("b", 0)])
        assert result.expired == 1 and result.items[0].status == "expired" and result.items[0].version == "1"
        assert store.window_metrics("m", 1).cumulative.labels == 1
        # an expired id stays expired after the record evicts it on the next insert
        predict(store, model, "c", np.array([[0.5, 0, 0, 0]], np.float32))
        assert store.feedback("m", [("b", 0)]).expired == 1
        assert store.feedback("m", [("a", 0)]).duplicate == 1  # labelled then evicted: still duplicate
        with pytest.raises(LookupError, match="recorded no predictions"):
            store.feedback("other", [("a", 1)])


def test_the_record_stays_bounded_and_evicts_oldest_first(clock):
    store = FeedbackStore(clock)
    with score_model(record_size=100) as model:
        rng = np.random.default_rng(0)
        for i in range(1000):
            clock.t += 0.001
            predict(store, model, f"r{i}", rng.random((1 + i % 3, 4), dtype=np.float32))
        rec = store.models["m"].tracks[1].rec
        assert len(rec.index) < 100 and len(rec.previous) <= 100 and len(rec.tombstones) <= 100
        assert rec.X.shape == (100, 4) and rec.Y.shape == (100, 1) and len(rec.times) == 300 and rec.seq == 1000
        held = [s for s in range(rec.seq - 100, rec.seq) if rec._held(s)]
        assert rec.live_entries() == len(held) and 33 <= len(held) and sum(rec.entry(s)[1] for s in held) <= 100
        assert store.feedback("m", [("r999", [0] * (1 + 999 % 3))]).joined == 1  # the newest is live
        assert store.feedback("m", [("r900", [0] * (1 + 900 % 3))]).expired == 1  # evicted: a tombstone
        assert store.feedback("m", [("r3", [0])]).unknown == 1  # forgotten past the tombstones too
        # the rows of every live entry are still its own
        for seq in held:
            x, y = rec.rows([seq])
            assert np.array_equal(x[:, :1], y) and len(y) == rec.entry(seq)[1]


def test_record_rows_wrap_and_survive_reused_ids():
    rec = PredictionRecord(capacity=5, horizon_s=100, y_width=1, x_layout=[("x", 0, 2)])
    for i, n in enumerate([2, 2, 2, 3]):
        x = np.full((n, 2), i, np.float32)
        rec.add(f"id{i}", float(i), x[:, :1], {"x": x}, None)
    # 2+2 fill slots 0-3; the third (2 rows) wraps to slots 0-1, evicting id0; the fourth (3 rows)
    # takes slots 2-4, evicting id1
    assert [k for k in sorted(rec.index) if rec.lookup(k, 4.0)[0] == "live"] == ["id2", "id3"]
    assert rec.live_entries() == 2
    for key, value in [("id2", 2), ("id3", 3)]:
        x, y = rec.rows([rec.index[key]])
        assert (x == value).all() and (y == value).all()
    assert rec.lookup("id0", 4.0)[0] == "expired" and rec.lookup("id1", 4.0)[0] == "expired"
    assert rec.lookup("id1", 4.0) == ("expired", None, 1.0)  # evicted: when it was predicted is still known
    rec.add("id3", 5.0, np.ones((1, 1), np.float32), {"x": np.ones((1, 2), np.float32)}, None)  # reused id
    status, seq, predicted_at = rec.lookup("id3", 5.0)
    assert status == "live" and predicted_at == 5.0 and rec.entry(seq)[1] == 1
    x, y = rec.rows([seq])
    assert x.tolist() == [[1, 1]] and y.ravel().tolist() == [1]
    assert rec.lookup("id2", 5.0)[0] == "expired"  # the new row took slot 0, which id2 held


@pytest.mark.parametrize("seed", range(6))
def test_recording_a_block_at_once_is_recording_its_requests_one_by_one(seed):
    """add_many (the engine's feedback drain) against add per request, over runs that wrap the
    ring, cross id generations, reuse ids, and hold requests add() skips (no rows, or more than
    the ring holds): the two records must agree field for field after every block."""
    rng = np.random.default_rng(seed)
    layout = [("a", 0, 2), ("b", 2, 1)]
    one, many = (PredictionRecord(capacity=7, horizon_s=100, y_width=2, x_layout=layout) for _ in range(2))
    t = 0.0
    for _ in range(40):
        k = int(rng.integers(1, 12))
        counts = rng.choice([0, 1, 1, 2, 3, 5, 7, 8], size=k)
        ids = [f"id{int(i)}" for i in rng.integers(0, 30, size=k)]
        times = [t + i for i in range(k)]
        t += k
        groups = [None if g == 0 else int(g) for g in rng.integers(0, 3, size=k)]
        rows = int(counts.sum())
        y = rng.standard_normal((rows, 2)).astype(np.float32)
        x = {"a": rng.standard_normal((rows, 2)), "b": rng.integers(0, 9, (rows, 1))}
        end = 0
        for i in range(k):
            r = slice(end, end + int(counts[i]))
            end += int(counts[i])
            one.add(ids[i], times[i], y[r], {n: a[r] for n, a in x.items()}, groups[i])
        many.add_many(ids, times, counts, y, x, groups)
        one.flush()
        for field in ("times", "starts", "nrows", "groups", "index", "previous", "tombstones", "seq", "head",
                      "last_time"):
            assert getattr(many, field) == getattr(one, field), field
        for request_id in set(ids) | set(one.index) | set(one.previous):
            assert many.lookup(request_id, t) == one.lookup(request_id, t)
            status, seq, _ = one.lookup(request_id, t)
            if seq is not None:
                xo, yo = one.rows([seq])
                xm, ym = many.rows([seq])
                assert np.array_equal(xo, xm) and np.array_equal(yo, ym)


def test_live_metrics_equal_numpy_per_window_and_cumulative(clock):
    store = FeedbackStore(clock)
    rng = np.random.default_rng(1)
    n, window = 1050, 200
    scores = rng.random(n, dtype=np.float32)
    labels = (rng.random(n) < np.clip(scores + 0.2 * rng.standard_normal(n), 0, 1)).astype(np.int64)
    with score_model(threshold=0.3, window_labels=window, history=3) as model:
        for i in range(n):
            predict(store, model, f"r{i}", np.array([[scores[i], 1, 2, 3]], np.float32))
        items = [(f"r{i}", int(labels[i])) for i in range(n)]
        assert store.feedback("m", items[:500]).joined == 500
        assert store.feedback("m", items[500:]).joined == 550
    predicted = (scores >= np.float32(0.3)).astype(np.int64)

    def expect(sl):
        p, t = predicted[sl], labels[sl]
        tp = int(((p == 1) & (t == 1)).sum())
        return (float((p == t).mean()), tp / int((p == 1).sum()), tp / int((t == 1).sum()))

    fb = store.window_metrics("m", 1)
    got = fb.cumulative
    assert got.labels == n and (got.accuracy, got.precision, got.recall) == pytest.approx(expect(slice(None)))
    assert got.tp + got.fp + got.fn + got.tn == n
    assert fb.kind == "binary" and len(fb.windows) == 3  # five closed, the last three kept
    for k, w in zip(range(2, 5), fb.windows):
        sl = slice(k * window, (k + 1) * window)
        assert w.labels == window and (w.accuracy, w.precision, w.recall) == pytest.approx(expect(sl))
    assert fb.current.labels == 50 and fb.current.accuracy == pytest.approx(expect(slice(1000, None))[0])
    assert len(store.window_metrics("m", 1, last=1).windows) == 1


def test_live_metrics_by_prediction_time_place_late_labels_where_their_predictions_were(clock):
    """Predictions over 6 s (1 s windows); labels come later, in shuffled order, some never:
    each window holds exactly the labelled predictions made in it, whatever the label order."""
    store = FeedbackStore(clock)
    rng = np.random.default_rng(2)
    n = 600
    scores = rng.random(n, dtype=np.float32)
    labels = (rng.random(n) < 0.5).astype(np.int64)
    times = 1_000_000.0 + np.sort(rng.random(n) * 6.0)  # prediction times
    with score_model(threshold=0.5, window_s=1.0, history=4) as model:
        for i in range(n):
            clock.t = times[i]
            predict(store, model, f"r{i}", np.array([[scores[i], 0, 0, 0]], np.float32))
        clock.t += 30.0
        labelled = rng.permutation(n)[: int(0.8 * n)]  # a fifth never labelled
        for chunk in np.array_split(labelled, 7):
            assert store.feedback("m", [(f"r{i}", int(labels[i])) for i in chunk]).joined == len(chunk)
    fb = store.window_metrics("m", 1)
    assert fb.window_s == 1.0 and [w.start for w in fb.by_prediction_time] == [1_000_002.0 + k for k in range(4)]
    correct = (scores >= np.float32(0.5)).astype(np.int64) == labels
    for w in fb.by_prediction_time:  # the last 4 of the 6 windows are kept
        rows = [i for i in labelled if w.start <= times[i] < w.end]
        assert w.end == w.start + 1.0 and w.labels == len(rows)
        assert w.accuracy == pytest.approx(correct[rows].mean())


def test_prediction_rules_two_columns_and_multiclass(clock):
    store = FeedbackStore(clock)
    x = np.array([[0.2, 0.6, 0.1, 0], [0.7, 0.4, 0.3, 0], [0.1, 0.2, 0.9, 0]], np.float32)
    # two columns, threshold 0.5 on column 1 -> [1, 0, 0]
    with score_model(out_width=2, name="two") as two, score_model(out_width=2, name="logits", threshold=None) \
            as logits, score_model(out_width=3, name="multi") as multi:
        for model in (two, logits, multi):
            for i, row in enumerate(x):
                predict(store, model, f"r{i}", row[None])
        store.feedback("two", [("r0", 1), ("r1", 1), ("r2", 0)])
        assert store.window_metrics("two", 1).cumulative.correct == 2  # [1, 0, 0] vs [1, 1, 0]
        store.feedback("logits", [("r0", 1), ("r1", 0), ("r2", 1)])  # argmax of 2: [1, 0, 1]
        assert store.window_metrics("logits", 1).cumulative.accuracy == 1.0
        result = store.feedback("multi", [("r0", 1), ("r1", 0), ("r2", 1), ("r2", 2)])
        assert result.joined == 3 and result.duplicate == 1
        m = store.window_metrics("multi", 1)  # argmax [1, 0, 2] vs [1, 0, 1]
        assert m.kind == "multiclass" and m.cumulative.correct == 2 and m.cumulative.precision is None


def test_labels_as_strings_lists_and_invalid(clock):
    store = FeedbackStore(clock)
    with score_model(name="named", classes=["legit", "fraud"]) as named, score_model(name="plain") as plain:
        for model in (named, plain):
            predict(store, model, "one", np.array([[0.8, 0, 0, 0]], np.float32))
            predict(store, model, "three", np.array([[0.8, 0, 0, 0], [0.1, 0, 0, 0], [0.6, 0, 0, 0]], np.float32))
        result = store.feedback("named", [("one", "fraud"), ("three", ["legit", "nope", "fraud"])])
        assert [i.status for i in result.items] == ["joined", "invalid"]
        assert "'nope' is not a class name (classes: legit, fraud)" in result.items[1].reason
        result = store.feedback("plain", [("three", 1), ("three", [1, 0]), ("one", 2), ("one", 0.5),
                                          ("three", ["true", "0", 1.0])])
        assert [i.status for i in result.items] == ["invalid", "invalid", "invalid", "invalid", "joined"]
        assert "send a list of 3 labels" in result.items[0].reason
        assert "outside the classes 0..1" in result.items[2].reason
        assert store.feedback("plain", [("one", "TRUE")]).joined == 1  # invalid labels left it open
        assert store.window_metrics("plain", 1).cumulative.labels == 4


def test_labels_join_the_version_that_answered(clock):
    store = FeedbackStore(clock)
    with score_model(version=1) as v1, score_model(version=2) as v2:
        predict(store, v1, "a", np.array([[0.9, 0, 0, 0]], np.float32))
        predict(store, v2, "b", np.array([[0.9, 0, 0, 0]], np.float32))
        result = store.feedback("m", [("a", 1), ("b", 0)])
        assert [(i.status, i.version) for i in result.items] == [("joined", "1"), ("joined", "2")]
        assert store.window_metrics("m", 1).cumulative.accuracy == 1.0
        assert store.window_metrics("m", 2).cumulative.accuracy == 0.0
        assert sorted(store.live_metrics("m")) == [1, 2]
        assert store.labelled_examples("m", version=2).ids.tolist() == ["b"]


def test_retired_versions_records_go_past_their_horizon_without_any_label(clock):
    store = FeedbackStore(clock)
    x = np.array([[0.9, 0, 0, 0]], np.float32)
    with score_model(version=1, horizon_s=60) as v1, score_model(version=2, horizon_s=60) as v2, \
            score_model(version=3, horizon_s=60) as v3:
        for version, model in enumerate((v1, v2, v3), 1):
            predict(store, model, f"r{version}", x)
        store.untrack(v1)  # retired within its horizon: its record stays, its labels still join
        assert sorted(store.model("m").tracks) == [1, 2, 3]
        clock.t += 61
        store.untrack(v2)  # both retired versions are now past their horizon: their records go
        assert sorted(store.model("m").tracks) == [3]  # the serving version keeps its record
        predict(store, v3, "r4", x)
        assert store.feedback("m", [("r4", 1)]).joined == 1


def test_a_retired_versions_record_goes_once_past_its_horizon_with_nothing_else_happening():
    from conftest import wait_until

    store = FeedbackStore()  # the real clock: a timer prunes
    x = np.array([[0.9, 0, 0, 0]], np.float32)
    with score_model(version=1, horizon_s=0.2) as v1, score_model(version=2, horizon_s=0.2) as v2:
        predict(store, v1, "r1", x)
        predict(store, v2, "r2", x)
        store.untrack(v1)  # retired within its horizon: kept until it has passed, with no label to prune it
        wait_until(lambda: 1 not in store.model("m").tracks, "version 1's record pruned")
        assert sorted(store.model("m").tracks) == [2]


def test_labelled_examples_hold_the_request_rows(clock):
    store = FeedbackStore(clock)
    rng = np.random.default_rng(2)
    with score_model(record_size=1000) as model:
        xs = {f"r{i}": rng.random((1 + i % 2, 4), dtype=np.float32) for i in range(20)}
        for i, (rid, x) in enumerate(xs.items()):
            predict(store, model, rid, x, group="A" if i % 2 else "B")
        clock.t += 5
        store.feedback("m", [(rid, [1] * len(xs[rid])) for rid in list(xs)[:10]])
        cut = clock.t
        clock.t += 5
        store.feedback("m", [(rid, [0] * len(xs[rid])) for rid in list(xs)[10:]])
    X, y, groups, ids, times = store.labelled_examples("m")
    assert np.array_equal(X, np.concatenate(list(xs.values())))
    assert y.tolist() == [1] * 15 + [0] * 15
    assert ids.tolist() == [rid for rid, x in xs.items() for _ in range(len(x))]
    assert groups.tolist() == [("A" if i % 2 else "B") for i, x in enumerate(xs.values()) for _ in range(len(x))]
    assert (times[:15] == cut).all() and (times[15:] == cut + 5).all()
    later = store.labelled_examples("m", since=cut)
    assert len(later) == 15 and later.ids[0] == "r10"
    assert np.array_equal(later.predictions[:, 0], later.X[:, 0])
    columns = later.as_dict()
    assert set(columns) >= {"f0", "f3", "label", "group", "id", "version", "p0", "labelled_at"}


def test_labelled_examples_held_in_memory_keep_within_record_max_bytes(clock):
    """Wide rows (a thousand floats of inputs and outputs each): the record keeps what fits its
    bytes, and so do the labelled examples, the newest first."""
    store = FeedbackStore(clock)
    with score_model(width=1000, out_width=1000, record_size=1000, record_max_bytes=100_000) as model:
        assert store.track(model).rec.capacity == 100_000 // (4 * 2000) == 12
        for i in range(20):  # labelled in turn: each joins while its prediction is still held
            predict(store, model, f"r{i}", np.full((1, 1000), i, np.float32))
            assert store.feedback("m", [(f"r{i}", [1])]).joined == 1
    buffer = store.model("m").labelled
    assert buffer.bytes <= 100_000 < 20 * (2 * 4000 + 8)  # x, prediction and label of each
    examples = store.labelled_examples("m")
    assert examples.ids.tolist() == [f"r{i}" for i in range(8, 20)]


def test_spill_files_are_readable_and_rotate(tmp_path, clock):
    store = FeedbackStore(clock)
    rng = np.random.default_rng(3)
    with score_model(spill_dir=str(tmp_path), spill_max_bytes=2000) as model:
        xs = [rng.random((1, 4), dtype=np.float32) for _ in range(40)]
        for i, x in enumerate(xs):
            predict(store, model, f"r{i}", x, group=i % 3)
        store.feedback("m", [(f"r{i}", i % 2) for i in range(25)])
        clock.t += 1
        store.feedback("m", [(f"r{i}", i % 2) for i in range(25, 40)] + [("r0", 1)])  # a duplicate is not spilled
    files = sorted(spill_path(tmp_path, "m").iterdir())
    assert len(files) > 2 and all(f.stat().st_size <= 2000 for f in files)
    spilled = read_spill(tmp_path, "m")
    memory = store.labelled_examples("m")
    assert np.array_equal(spilled.X, np.concatenate(xs)) and np.array_equal(spilled.X, memory.X)
    assert spilled.y.tolist() == [i % 2 for i in range(40)] and spilled.groups.tolist() == [i % 3 for i in range(40)]
    assert spilled.ids.tolist() == memory.ids.tolist() and np.array_equal(spilled.times, memory.times)
    assert len(read_spill(tmp_path, "m", since=clock.t - 1)) == 15
    # a line still being written at the end of the last file is skipped
    with open(files[-1], "ab") as f:
        f.write(b'{"id": "half')
    assert len(read_spill(tmp_path, "m")) == 40
    # a new writer (a restarted server) appends to the last file, never truncates
    store2 = FeedbackStore(clock)
    with score_model(spill_dir=str(tmp_path), spill_max_bytes=2000) as model:
        predict(store2, model, "new", xs[0])
        store2.feedback("m", [("new", 1)])
    assert read_spill(tmp_path, "m").ids.tolist()[-1] == "new"


def test_feedback_off_and_unrecordable_outputs(clock):
    store = FeedbackStore(clock)
    with score_model(enabled=False) as off:
        assert store.track(off) is None and "m" not in store.models
    config = msgspec.structs.replace(vector_config(name="var", width=-1, out_width=-1), feedback=FeedbackConfig())
    with Model.from_callable(lambda inputs: {"y": inputs["x"]}, config) as var:
        assert store.track(var) is None
        assert "fixed size" in store.report("var").not_recorded["1"]


def test_a_spill_file_cut_mid_line_by_a_crash_loses_only_that_line(tmp_path):
    from loopserve.monitor.labelled import Joined, SpillWriter, read_spill, spill_path

    def item(i):
        return Joined(float(i), float(i), f"r{i}", 1, None, np.zeros((1, 2), np.float32), np.array([1]),
                      np.zeros((1, 1), np.float32))

    writer = SpillWriter(tmp_path, "m", 1 << 20)
    writer.write([item(0), item(1)])
    writer.close()
    path = sorted(spill_path(tmp_path, "m").glob("*.jsonl"))[-1]
    data = path.read_bytes()
    path.write_bytes(data[:-10])  # the crash: r1's line cut short
    writer = SpillWriter(tmp_path, "m", 1 << 20)
    writer.write([item(2), item(3)])
    writer.close()
    assert list(read_spill(tmp_path, "m").ids) == ["r0", "r2", "r3"]


def test_a_fleets_spill_directories_are_read_together_once_each(tmp_path):
    """Each replica spills into its own directory; the pipeline reads them as a list or a glob,
    and a directory named twice (or a pattern and a name for the same one) adds no row twice."""
    from loopserve.monitor.labelled import Joined, SpillWriter, read_spill, spill_dirs
    from loopserve.pipeline.retrain_data import read_labelled_examples

    def item(i):
        return Joined(100.0 + i, float(i), f"r{i}", 1, i % 3, np.full((1, 2), i, np.float32), np.array([i % 2]),
                      np.zeros((1, 1), np.float32))

    for replica in range(3):  # row i answered by replica i % 3, as the fleet demo spreads its traffic
        writer = SpillWriter(tmp_path / "feedback" / f"replica-{replica}", "m", 1 << 20)
        writer.write([item(i) for i in range(replica, 30, 3)])
        writer.close()
    names = [tmp_path / "feedback" / f"replica-{r}" for r in range(3)]
    pattern = str(tmp_path / "feedback" / "replica-*")
    assert spill_dirs(pattern) == names
    assert spill_dirs([pattern, str(names[1]), names[1]]) == names
    for spec in ([str(p) for p in names], pattern, [pattern, str(names[0]), pattern]):
        spilled = read_spill(spec, "m")
        assert sorted(spilled.ids.tolist(), key=lambda r: int(r[1:])) == [f"r{i}" for i in range(30)], spec
    # The pipeline's read: every replica's rows, newest predictions, in prediction order.
    examples = read_labelled_examples([pattern, str(names[2])], "m", max_rows=12, predicted_after=5.0)
    assert examples.predicted_at.tolist() == [float(i) for i in range(18, 30)]
    assert examples.features[:, 0].tolist() == [float(i) for i in range(18, 30)]
    assert examples.groups.tolist() == [i % 3 for i in range(18, 30)]
    # A replica's directory that does not exist yet (a pod still starting) reads as empty.
    assert len(read_spill([str(names[0]), str(tmp_path / "feedback" / "replica-9")], "m")) == 10
