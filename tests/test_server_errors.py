"""Every refusal: the right status, a JSON body that says what was wrong and what was
expected, and a server that serves on."""

import threading
import time

import msgspec
import numpy as np
import pytest

from loopserve import Model
from loopserve.server.app import LoopserveApp
from loopserve.serving.repository import ModelRepository

from conftest import vector_config, wait_until

GATE = threading.Event()
ENTERED = threading.Event()  # the gated model is running a request


def doubling(inputs):
    return {"y": inputs["x"] * 2}


def picky(inputs):
    if (inputs["x"] < 0).any():
        raise ValueError("picky model: negative inputs are not allowed")
    return {"y": inputs["x"] * 2}


def gated(inputs):
    ENTERED.set()
    assert GATE.wait(60), "the test never opened the gate"
    return {"y": inputs["x"] * 2}


@pytest.fixture
def server(serve):
    repository = ModelRepository()
    repository.add(Model.from_callable(doubling, vector_config(name="double", max_batch_size=4)))
    repository.add(Model.from_callable(picky, vector_config(name="picky", max_batch_size=4)))
    repository.add(Model.from_callable(gated, vector_config(name="gated", max_batch_size=1, queue_capacity=2)))
    server = serve(LoopserveApp(repository, max_body_bytes=4096))
    server.repository = repository
    return server


def infer_json(x, name="x", datatype="FP32", **extra):
    return msgspec.json.encode({"inputs": [{"name": name, "shape": list(np.shape(x)), "datatype": datatype,
                                            "data": np.asarray(x).ravel().tolist()}], **extra})


def assert_refused(response, status, *fragments):
    code, headers, body = response
    assert code == status, body
    assert headers["content-type"] == "application/json"
    message = msgspec.json.decode(body)["error"]
    for f in fragments:
        assert f in message, message
    return headers


def assert_serves(server):
    code, _, body = server.request("POST", "/v2/models/double/infer", infer_json([[1, 2, 3, 4]]))
    assert code == 200, body
    assert msgspec.json.decode(body)["outputs"][0]["data"] == [2, 4, 6, 8]


def binary_request(x: np.ndarray, claimed_size=None, extra=b""):
    header = msgspec.json.encode({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                              "parameters": {"binary_data_size": claimed_size or x.nbytes}}]})
    return header + x.tobytes() + extra, {"Inference-Header-Content-Length": str(len(header))}


@pytest.mark.parametrize(
    "body, headers, status, fragments",
    [
        (b"{not json", {}, 400, ["JSON"]),
        (b'{"inputs": 5}', {}, 400, ["Expected `array`"]),
        (infer_json([[1, 2, 3, 4]], datatype="FP64"), {}, 400, ["input 'x' has datatype FP64", "expects FP32"]),
        (infer_json([[1, 2, 3]]), {}, 400, ["shape [1, 3]", "expects [-1, 4]"]),
        (msgspec.json.encode({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3]}]}),
         {}, 400, ["input 'x'", "4", "3"]),
        (infer_json([[1, 2, 3, 4]], name="z"), {}, 400, ["no input 'z'", "'x'"]),
        (infer_json([[1, 2, 3, 4]] * 5), {}, 400, ["5 rows", "max_batch_size 4"]),
        (infer_json([[1, 2, 3, 4]], datatype="FLOAT32"), {}, 400, ["FLOAT32"]),
        (*binary_request(np.ones((1, 4), np.float32), claimed_size=32), 400, ["truncated"]),
        (b"{}", {"Inference-Header-Content-Length": "abc"}, 400, ["Inference-Header-Content-Length"]),
        (b"{}", {"Inference-Header-Content-Length": "99"}, 400, ["99"]),
        (b"x" * 5000, {}, 413, ["over the limit of 4096 bytes"]),
        (infer_json([[1, 2, 3, 4]], parameters={"priority": "high"}), {}, 400, ["priority"]),
    ],
)
def test_bad_requests_are_refused_clearly(server, body, headers, status, fragments):
    assert_refused(server.request("POST", "/v2/models/double/infer", body, headers), status, *fragments)
    assert_serves(server)


def test_unknown_model_and_version_are_404(server, caplog):
    assert_refused(server.request("POST", "/v2/models/ghost/infer", infer_json([[1, 2, 3, 4]])), 404,
                   "unknown model 'ghost'")
    assert_refused(server.request("POST", "/v2/models/double/versions/9/infer", infer_json([[1, 2, 3, 4]])), 404,
                   "has no version '9'")
    assert_refused(server.request("GET", "/v2/models/ghost"), 404, "unknown model 'ghost'")
    assert_refused(server.request("GET", "/v2/nowhere"), 404, "no route GET /v2/nowhere")
    headers = assert_refused(server.request("POST", "/v2/health/live"), 405, "/v2/health/live does not take POST")
    assert "GET" in headers["allow"]
    assert_serves(server)
    # A refusal is an answer, not a server error: nothing is logged as one.
    assert not [r for r in caplog.records if r.levelno >= 40], [r.getMessage() for r in caplog.records]


def test_model_failure_is_500_with_the_models_message(server):
    assert_refused(server.request("POST", "/v2/models/picky/infer", infer_json([[-1, 2, 3, 4]])), 500,
                   "ValueError: picky model: negative inputs are not allowed")
    code, _, _ = server.request("POST", "/v2/models/picky/infer", infer_json([[1, 2, 3, 4]]))
    assert code == 200


def test_queue_full_is_429_with_retry_after_and_timeout_is_504(server):
    GATE.clear()
    ENTERED.clear()
    results = {}
    model = server.repository.router("gated").versions[1]

    def start(key, body):
        t = threading.Thread(target=lambda: results.__setitem__(key, server.request("POST", "/v2/models/gated/infer",
                                                                                      body)))
        t.start()
        return t

    running = start("running", infer_json([[1, 2, 3, 4]]))
    assert ENTERED.wait(60), "the gated model never ran"  # the one instance is busy now
    waiting = start("waiting", infer_json([[1, 2, 3, 4]]))  # queued, no timeout
    wait_until(lambda: model.stats().queued == 1, "the second request is queued")
    hurried = start("hurried", infer_json([[1, 2, 3, 4]], parameters={"timeout": 50_000}))  # queue full now
    wait_until(lambda: model.stats().queued == 2, "the hurried request is queued")
    time.sleep(0.1)  # past the hurried request's 50 ms timeout: what is tested here, not a synchronisation
    # The hurried request timed out while the model was busy: the next arrival answers it
    # (504, never run) and takes its place in the queue.
    late = start("late", infer_json([[1, 2, 3, 4]]))
    wait_until(lambda: "hurried" in results and model.stats().queued == 2, "the late request took its place")
    assert_refused(results["hurried"], 504, "timed out", "it was not run")
    headers = assert_refused(server.request("POST", "/v2/models/gated/infer", infer_json([[1, 2, 3, 4]])), 429,
                             "queue of model 'gated' is full")
    assert headers["retry-after"] == "1"
    assert_serves(server)  # other models are not held up
    GATE.set()
    for t in (running, waiting, hurried, late):
        t.join()
    assert results["running"][0] == results["waiting"][0] == results["late"][0] == 200
    stats = model.stats()
    assert (stats.success, stats.timed_out, stats.rejected) == (3, 1, 1)


def test_repository_index_with_a_bad_body(server):
    assert_refused(server.request("POST", "/v2/repository/index", b"[1"), 400, "JSON object")
    code, _, body = server.request("POST", "/v2/repository/index", b'{"ready": true}')
    assert code == 200 and {m["name"] for m in msgspec.json.decode(body)} == {"double", "picky", "gated"}
