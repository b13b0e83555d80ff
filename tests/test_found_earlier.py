"""Issue 12's "found earlier and left alone", each shown fixed."""

import time

import numpy as np
import pytest

from loopserve.monitor.profile import ProfileError, build_profile


def test_a_category_code_in_minus_one_to_zero_is_not_missing_in_the_profile_and_zero_live():
    """The live accumulators truncate a code toward zero (-0.5 is category 0); the profile read
    every negative value as missing, so the same data counted differently in the reference and
    in the windows. The profile now reads codes as the accumulators do, and refuses -0.5 as it
    refuses every code that is not an integer."""
    column = np.array([0, 1, 2, 1, 0, -0.5], dtype=np.float32)
    with pytest.raises(ProfileError, match="non-integer codes, e.g. -0.5"):
        build_profile({"c": column}, categorical=["c"])
    # Negative integers and non-finite values stay missing, as live.
    profile = build_profile({"c": np.array([0, 1, 2, 1, -1, -7, np.nan], dtype=np.float32)}, categorical=["c"])
    (feature,) = profile.features
    assert feature.missing == 3 and sorted(feature.categories) == [0, 1, 2]


def test_a_late_label_for_a_version_below_the_newest_32_still_counts():
    """Live metrics are kept for at most MAX_VERSIONS (32) versions. A late label for an older
    version made its metrics, then evicted them at once (the lowest version went first), so the
    label answered "joined" and counted nowhere. Now the lowest *other* version makes room."""
    import msgspec
    from conftest import vector_config
    from loopserve import Model
    from loopserve.config import FeedbackConfig
    from loopserve.monitor.feedback import MAX_VERSIONS, FeedbackStore

    config = msgspec.structs.replace(vector_config(name="m", width=2, out_width=1, max_batch_size=8),
                                     feedback=FeedbackConfig())
    store = FeedbackStore()

    def predict(model, request_id):
        x = np.array([[0.9, 0]], np.float32)
        store.track(model).record(request_id, {"x": x}, model.infer_sync({"x": x}), None)

    with Model.from_callable(lambda inputs: {"y": inputs["x"][:, :1].copy()}, config, 1) as old:
        predict(old, "late")
        for version in range(2, MAX_VERSIONS + 2):  # 32 newer versions, each labelled
            with Model.from_callable(lambda inputs: {"y": inputs["x"][:, :1].copy()}, config, version) as model:
                predict(model, f"r{version}")
                assert store.feedback("m", [(f"r{version}", 1)]).joined == 1
        result = store.feedback("m", [("late", 1)])
        assert result.joined == 1 and result.items[0].version == "1"
        metrics = store.window_metrics("m", 1)
        assert metrics is not None and metrics.cumulative.labels == 1
        assert len(store.live_metrics("m")) == MAX_VERSIONS and store.window_metrics("m", MAX_VERSIONS + 1)


def test_a_spill_writer_closed_during_a_write_does_not_reopen_its_file(tmp_path):
    """A feedback post read the model's spill writer, then wrote off the event loop; a config
    change closed that writer meanwhile and made a new one, and the write reopened the old
    writer's file: two writers appending to one file, one of them never closed. A closed
    writer now refuses, and the new one takes the lines."""
    import msgspec
    from conftest import vector_config
    from loopserve import Model
    from loopserve.config import FeedbackConfig
    from loopserve.monitor.feedback import FeedbackStore
    from loopserve.monitor.labelled import read_spill

    def config(max_bytes):
        return msgspec.structs.replace(vector_config(name="m", width=2, out_width=1, max_batch_size=8),
                                       feedback=FeedbackConfig(spill_dir=str(tmp_path), spill_max_bytes=max_bytes))

    store = FeedbackStore()
    with Model.from_callable(lambda inputs: {"y": inputs["x"][:, :1].copy()}, config(1 << 20), 1) as model:
        x = np.array([[0.9, 0]], np.float32)
        for request_id in ("a", "b"):
            store.track(model).record(request_id, {"x": x}, model.infer_sync({"x": x}), None)
        mf = store.model("m")
        _, first = mf.join([("a", 1)])
        store.spill("m", first)
        old = mf.spill  # what a post holds while its write waits for a worker thread
        mf.configure(config(2 << 20).feedback)  # a reload with another spill size: a new writer
        assert mf.spill is not old
        _, joined = mf.join([("b", 0)])
        assert not old.write(joined) and old._file is None  # refused: no file reopened
        store.spill("m", joined)  # the route's way: the current writer takes them
        mf.spill.close()
    ids = sorted(read_spill(str(tmp_path), "m").ids.tolist())
    assert ids == ["a", "b"]


def test_equal_data_with_decimal_and_nested_nulls_gets_one_snapshot_id(tmp_path):
    """Slots under nulls were zeroed for numbers and strings only: a decimal column, or a list or
    struct column, with anything under its nulls wrote other bytes, so equal data got another
    snapshot id (and stored its chunks again)."""
    import decimal

    import pyarrow as pa

    from loopserve import data

    dec = pa.decimal128(10, 2)
    plain = pa.table({
        "d": pa.array([decimal.Decimal("1.50"), None, decimal.Decimal("2.00")], dec),
        "l": pa.array([[1.0, None], None, [2.0]], pa.list_(pa.float64())),
        "s": pa.array([{"a": 1}, None, {"a": 3}], pa.struct([("a", pa.int64())])),
    })
    junk_decimals = pa.array([decimal.Decimal("1.50"), decimal.Decimal("9.99"), decimal.Decimal("2.00")], dec)
    junk_floats = pa.array([1.0, 42.0, 7.0, 2.0])
    values = pa.Array.from_buffers(pa.float64(), 4, [pa.array([True, False, True, True]).buffers()[1],
                                                     junk_floats.buffers()[1]], null_count=1)
    junk = pa.table({
        "d": pa.Array.from_buffers(dec, 3, [plain["d"].chunk(0).buffers()[0], junk_decimals.buffers()[1]], null_count=1),
        "l": pa.ListArray.from_arrays(pa.array([0, 2, 3, 4], pa.int32()), values, mask=pa.array([False, True, False])),
        "s": pa.StructArray.from_arrays([pa.array([1, 5, 3])], names=["a"], mask=pa.array([False, True, False])),
    })
    assert plain.equals(junk)
    store = tmp_path / "store"
    assert data.snapshot(plain, store=store).id == data.snapshot(junk, store=store).id


@pytest.mark.parametrize("newer", [2, 1], ids=["newer-version-evicted", "older-version-evicted"])
def test_a_label_joins_the_most_recent_prediction_of_its_id_not_an_older_one_of_another_version(serve, tmp_path,
                                                                                               newer):
    """Two versions serve one model and both predicted for request id "shared"; the more recent
    prediction's version then evicted it (busy traffic), the other still holds its older one. An
    evicted entry forgot when it was made (time 0), so the older prediction looked newest and the
    label joined it: a label meant for one version's answer counted in another's metrics and
    retraining data. The label now meets the most recent prediction, whichever version made it,
    and is answered "expired" there."""
    import http.client
    import json

    import msgspec
    from conftest import vector_config
    from loopserve import Model
    from loopserve.config import FeedbackConfig
    from loopserve.server.app import LoopserveApp
    from loopserve.serving.repository import ModelRepository

    config = msgspec.structs.replace(vector_config(name="m", width=2, out_width=1, max_batch_size=8),
                                     feedback=FeedbackConfig(record_size=4, horizon_s=3600))
    repository = ModelRepository(tmp_path / "models")
    for version in (1, 2):
        repository.add(Model.from_callable(lambda inputs: {"y": inputs["x"][:, :1].copy()}, config, version))
    server = serve(LoopserveApp(repository))
    older = 3 - newer
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)

    def infer(version, request_id):
        body = {"id": request_id, "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [0.9, 0]}]}
        conn.request("POST", f"/v2/models/m/versions/{version}/infer", json.dumps(body).encode())
        response = conn.getresponse()
        assert response.status == 200, response.read()
        response.read()

    try:
        infer(older, "shared")
        time.sleep(0.01)  # a later prediction, on any clock
        infer(newer, "shared")
        for i in range(8):  # twice the record's size: the newer version has evicted "shared"
            infer(newer, f"busy-{i}")
        status, _, raw = server.request("POST", "/v2/models/m/feedback", json.dumps({"id": "shared", "label": 1}).encode())
        assert status == 200, raw
        assert msgspec.json.decode(raw)["items"] == [{"id": "shared", "status": "expired", "version": str(newer)}]
        # The older version's own ids still join there.
        infer(older, "own")
        status, _, raw = server.request("POST", "/v2/models/m/feedback", json.dumps({"id": "own", "label": 1}).encode())
        assert msgspec.json.decode(raw)["items"] == [{"id": "own", "status": "joined", "version": str(older)}]
    finally:
        conn.close()
        repository.close()
