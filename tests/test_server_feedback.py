"""Feedback through the server: infer with and without request ids (tritonclient), labels posted
to POST /v2/models/{m}/feedback, GET .../feedback, the Prometheus families, labelled examples and
the spill files. A real server on loopback serving real models."""

import json

import msgspec
import numpy as np
import pytest
import tritonclient.http as httpclient

from conftest import vector_config
from loopserve import Model, zoo
from loopserve.config import FeedbackConfig
from loopserve.monitor.labelled import read_spill
from loopserve.server.app import LoopserveApp
from loopserve.serving.repository import ModelRepository

WIDTH = 32


class Clock:
    def __init__(self, t=2_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture
def repo(tmp_path):
    """`mlp`: the tiny MLP (ONNX, two logit columns: argmax); `score`: y = x[:, :1], a score the
    test chooses; `quiet`: feedback off."""
    repository = ModelRepository(tmp_path / "models")
    zoo.write_model_dir(tmp_path / "models", "mlp", zoo.tiny_mlp(), extra_config=(
        f"feedback: {{threshold: null, window_labels: 50, spill_dir: {tmp_path / 'spill'}}}\n"))
    repository.load("mlp")
    score = msgspec.structs.replace(vector_config(name="score", width=4, out_width=1, max_batch_size=64),
                                    feedback=FeedbackConfig(horizon_s=60, window_labels=100))
    repository.add(Model.from_callable(lambda inputs: {"y": inputs["x"][:, :1].copy()}, score))
    quiet = msgspec.structs.replace(vector_config(name="quiet"), feedback=FeedbackConfig(enabled=False))
    repository.add(Model.from_callable(lambda inputs: {"y": inputs["x"]}, quiet))
    yield repository
    repository.close()


def infer(client, model, x, request_id="", parameters=None, name="x"):
    inp = httpclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    result = client.infer(model, [inp], request_id=request_id, parameters=parameters)
    return result.get_response()["id"], result.as_numpy(result.get_response()["outputs"][0]["name"])


def post(server, model, body):
    status, _, raw = server.request("POST", f"/v2/models/{model}/feedback",
                                    body if isinstance(body, bytes) else json.dumps(body).encode())
    return status, msgspec.json.decode(raw)


def test_ids_given_and_generated_join_with_defined_answers(serve, repo, tmp_path):
    clock = Clock()
    repo.services.feedback.clock = clock
    server = serve(LoopserveApp(repo))
    client = httpclient.InferenceServerClient(server.url)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, WIDTH)).astype(np.float32)
    ids, outputs = [], []
    for i in range(200):
        rid, y = infer(client, "mlp", x[i:i + 1], request_id=f"req-{i}" if i % 2 else "", name=zoo.INPUT)
        assert rid == f"req-{i}" if i % 2 else rid and not rid.startswith("req-")
        ids.append(rid)
        outputs.append(y)
    assert len(set(ids)) == 200
    predicted = np.argmax(np.concatenate(outputs), axis=1)
    labels = rng.integers(0, 2, 200)
    status, body = post(server, "mlp", {"labels": [{"id": ids[i], "label": int(labels[i])} for i in range(120)]})
    assert status == 200 and body["joined"] == 120 and body["model"] == "mlp"
    assert body["items"][0] == {"id": ids[0], "status": "joined", "version": "1"}
    clock.t += 10
    status, body = post(server, "mlp", {"labels": [
        *({"id": ids[i], "label": int(labels[i])} for i in range(120, 200)),
        {"id": "never-sent", "label": 1}, {"id": ids[0], "label": 1 - int(labels[0])}]})
    assert (body["joined"], body["unknown"], body["duplicate"], body["expired"]) == (80, 1, 1, 0)
    assert body["items"][-2] == {"id": "never-sent", "status": "unknown"}
    status, body = post(server, "mlp", {"id": ids[5], "label": 0})  # the single form
    assert status == 200 and body["duplicate"] == 1

    # the numbers, against numpy on the same rows
    status, _, raw = server.request("GET", "/v2/models/mlp/feedback?windows=all")
    report = msgspec.json.decode(raw)
    (version,) = report["versions"]
    tp = int(((predicted == 1) & (labels == 1)).sum())
    assert version["cumulative"]["labels"] == 200
    assert version["cumulative"]["accuracy"] == pytest.approx((predicted == labels).mean())
    assert version["cumulative"]["precision"] == pytest.approx(tp / (predicted == 1).sum())
    assert version["cumulative"]["recall"] == pytest.approx(tp / (labels == 1).sum())
    assert [w["labels"] for w in version["windows"]] == [50, 50, 50, 50]
    assert version["windows"][1]["accuracy"] == pytest.approx((predicted[50:100] == labels[50:100]).mean())
    assert report["labels"] == {"": {"unknown": 1}, "1": {"duplicate": 2, "joined": 200}}
    assert report["records"][0]["entries"] == 200 and report["records"][0]["input_width"] == WIDTH

    # Prometheus
    status, _, raw = server.request("GET", "/metrics")
    text = raw.decode()
    accuracy = (predicted == labels).mean()
    assert f'loopserve_live_accuracy{{model="mlp",version="1",window="cumulative"}} {accuracy}' in text
    assert 'loopserve_live_precision{model="mlp",version="1",window="last"}' in text
    assert 'loopserve_live_recall{model="mlp",version="1",window="cumulative"}' in text
    assert 'loopserve_feedback_labels_total{model="mlp",status="joined",version="1"} 200.0' in text
    assert 'loopserve_feedback_labels_total{model="mlp",status="unknown",version=""} 1.0' in text
    assert 'loopserve_live_labels_total{model="mlp",version="1"} 200.0' in text

    # labelled examples: in memory and spilled
    X, y, groups, got_ids, times = repo.services.feedback.labelled_examples("mlp")
    assert np.array_equal(X, x) and np.array_equal(y, labels) and got_ids.tolist() == ids
    assert (times[:120] == clock.t - 10).all() and (times[120:] == clock.t).all()
    spilled = read_spill(tmp_path / "spill", "mlp")
    assert np.array_equal(spilled.X, x) and np.array_equal(spilled.y, labels) and spilled.ids.tolist() == ids
    assert np.array_equal(np.argmax(spilled.predictions, axis=1), predicted)


def test_late_labels_past_the_horizon_are_expired(serve, repo, request):
    if request.node.callspec.params["serve"] > 1:
        pytest.skip("fakes the feedback store's clock; with workers > 1 the engine's native taps stamp each "
                    "prediction with the real time (the horizon logic is the same)")
    clock = Clock()
    repo.services.feedback.clock = clock
    server = serve(LoopserveApp(repo))
    client = httpclient.InferenceServerClient(server.url)
    early, _ = infer(client, "score", np.array([[0.9, 0, 0, 0]], np.float32))
    clock.t += 45
    late, _ = infer(client, "score", np.array([[0.1, 0, 0, 0]], np.float32))
    clock.t += 30  # early is 75 s old, past the 60 s horizon; late is 30 s old
    status, body = post(server, "score", {"labels": [{"id": early, "label": 1}, {"id": late, "label": 0}]})
    assert status == 200 and [i["status"] for i in body["items"]] == ["expired", "joined"]
    assert body["items"][0]["version"] == "1"
    status, _, raw = server.request("GET", "/metrics")
    assert 'loopserve_feedback_labels_total{model="score",status="expired",version="1"} 1.0' in raw.decode()


def test_several_rows_groups_and_raw_binary_requests(serve, repo):
    server = serve(LoopserveApp(repo))
    client = httpclient.InferenceServerClient(server.url)
    x = np.array([[0.9, 1, 2, 3], [0.2, 1, 2, 3], [0.7, 1, 2, 3]], np.float32)
    rid, _ = infer(client, "score", x, parameters={"group": "A"})
    status, body = post(server, "score", {"id": rid, "label": 1})
    assert body["invalid"] == 1 and "send a list of 3 labels" in body["items"][0]["reason"]
    status, body = post(server, "score", {"id": rid, "label": [1, 0, "0"]})
    assert body["joined"] == 1
    store = repo.services.feedback
    assert store.window_metrics("score", 1).cumulative.correct == 2  # predicted [1, 0, 1]
    examples = store.labelled_examples("score")
    assert np.array_equal(examples.X, x) and examples.groups.tolist() == ["A"] * 3
    # Triton's raw binary form has no JSON for an id: one is made and returned
    status, _, raw = server.request("POST", "/v2/models/score/infer", x.tobytes(),
                                    {"Inference-Header-Content-Length": "0"})
    rid = msgspec.json.decode(raw)["id"]
    assert status == 200 and post(server, "score", {"id": rid, "label": [1, 0, 1]})[1]["joined"] == 1


@pytest.mark.parametrize("body, message", [
    (b"not json", "feedback body: JSON is malformed"),
    ({"labels": 3}, "Expected `array | null`, got `int` - at `$.labels`"),
    ({"labels": [{"id": "a"}]}, "Object missing required field `label`"),
    ({"labels": [{"id": "a", "label": {"x": 1}}]}, "at `$.labels[0].label`"),
    ({"labels": [{"id": 7, "label": 1}]}, "Expected `str`, got `int`"),
    ({"labels": [{"id": "a", "label": 1, "extra": 2}]}, "unknown field `extra`"),
    ({"labels": []}, "'labels' is empty"),
    ({"id": "a"}, "needs 'labels', or both 'id' and 'label'"),
    ({"labels": [{"id": "a", "label": 1}], "id": "b", "label": 0}, "send one form"),
])
def test_a_bad_body_is_a_400_saying_what_was_expected(serve, repo, body, message):
    server = serve(LoopserveApp(repo))
    status, answer = post(server, "score", body if isinstance(body, bytes) else json.dumps(body).encode())
    assert status == 400 and message in answer["error"], answer
    assert 'expected {"labels": [{"id": "<request id>"' in answer["error"]


def test_unknown_model_feedback_off_and_no_request_yet(serve, repo):
    server = serve(LoopserveApp(repo))
    status, body = post(server, "nope", {"id": "a", "label": 1})
    assert status == 404 and "unknown model 'nope'" in body["error"]
    status, body = post(server, "quiet", {"id": "a", "label": 1})
    assert status == 404 and "feedback.enabled: false" in body["error"]
    # a model that has answered nothing yet answers "unknown", not 404
    status, body = post(server, "score", {"id": "a", "label": 1})
    assert status == 200 and body["unknown"] == 1
    status, _, raw = server.request("GET", "/v2/models/score/feedback")
    assert status == 200 and msgspec.json.decode(raw)["versions"] == []
    status, _, raw = server.request("GET", "/v2/models/score/feedback?windows=x")
    assert status == 400 and b"expected a number of windows or 'all'" in raw
    # a model with feedback off returns no generated id (the response is as Triton's)
    client = httpclient.InferenceServerClient(server.url)
    x = httpclient.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.zeros((1, 4), np.float32))
    assert "id" not in client.infer("quiet", [x]).get_response()


def test_a_model_with_wide_outputs_loads_with_a_record_that_fits_its_budget(serve, tmp_path):
    """An image-sized output (3 x 512 x 512 floats a row) with feedback on by default: 100,000 rows
    would take 300 GiB, so the record keeps what `record_max_bytes` holds, and labels still join."""
    width = 3 * 512 * 512
    repository = ModelRepository(tmp_path / "models")
    config = vector_config(name="mask", width=2, out_width=width, max_batch_size=4)
    repository.add(Model.from_callable(lambda inputs: {"y": np.repeat(inputs["x"][:, :1], width, axis=1)}, config))
    small = msgspec.structs.replace(vector_config(name="small", width=2, out_width=1000, max_batch_size=4),
                                    feedback=FeedbackConfig(record_max_bytes=40_000))
    repository.add(Model.from_callable(lambda inputs: {"y": np.repeat(inputs["x"][:, :1], 1000, axis=1)}, small))
    try:
        server = serve(LoopserveApp(repository))
        client = httpclient.InferenceServerClient(server.url)
        ids = [infer(client, "small", np.array([[i, 0]], np.float32))[0] for i in range(12)]
        rid, y = infer(client, "mask", np.array([[0.75, 0]], np.float32))
        assert y.shape == (1, width) and (y == 0.75).all()
        status, _, raw = server.request("GET", "/v2/models/mask/feedback")
        (record,) = msgspec.json.decode(raw)["records"]
        assert status == 200 and record["capacity_rows"] == (256 << 20) // (4 * (width + 2)) == 85
        assert post(server, "mask", {"id": rid, "label": 1})[1]["joined"] == 1
        # 40,000 bytes hold 9 rows of 1,002 floats: the 12 requests evicted the first 3
        _, _, raw = server.request("GET", "/v2/models/small/feedback")
        assert msgspec.json.decode(raw)["records"][0]["capacity_rows"] == 9
        _, body = post(server, "small", {"labels": [{"id": i, "label": 1} for i in ids]})
        assert body["joined"] == 9 and body["expired"] == 3
    finally:
        repository.close()
