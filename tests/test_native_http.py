"""The engine's native infer path (http.native_infer, csrc/http/) against real clients on a
loopback port, at workers 2 (handing over to front ends) and 1 (to the process's own uvicorn): the same answers as the Python path, keep-alive and pipelining, a connection
handed to a front end mid-way, statistics and metrics that count what it served, and slow
clients handed to Python's timers while others are served.

The Python path of the same server is reached with HTTP/1.0, which the native path leaves to
the front ends: so both paths answer the very same request, side by side.

(Every server test runs with the native path on at workers 2, its default there: the `serve`
fixture's workers2 variant, tests/conftest.py; the infer route's modules also run a workers2python
variant with it off.)
"""

from __future__ import annotations

import json
import socket

import msgspec
import numpy as np
import pytest
import tritonclient.http as httpclient

from conftest import RunningServer, wait_until
from helpers_http import Answers, exchange, native_and_python
from loopserve.server.app import LoopserveApp
from loopserve.server.config import HttpConfig


@pytest.fixture(scope="module", params=[2, 1], ids=["workers2", "workers1"])
def server(model_repo, tmp_path_factory, request):
    import shutil

    from loopserve.serving.repository import ModelRepository

    root = tmp_path_factory.mktemp("native") / "models"
    shutil.copytree(model_repo / "mlp_onnx", root / "mlp")
    repository = ModelRepository(root)
    repository.load("mlp")
    running = RunningServer(LoopserveApp(repository), workers=request.param, native_infer=True)
    yield running
    running.stop()
    repository.close()


def _request(body: dict | bytes, model: str = "mlp", version: str | None = None) -> bytes:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload


def _both_paths(server, body, **kw):
    """(native answer, Python answer) of one request: HTTP/1.1, then the same as HTTP/1.0."""
    return native_and_python(server.port, _request(body, **kw))


def _x(rows=1, width=32, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, width)).astype(np.float32)


def _infer_body(x: np.ndarray, nested=False, **extra) -> dict:
    data = x.tolist() if nested else x.ravel().tolist()
    return {"inputs": [{"name": "INPUT0", "shape": list(x.shape), "datatype": "FP32", "data": data}], **extra}


def test_answers_match_the_python_path_and_are_served_natively(server, tiny_reference):
    before = server.native_http.stats()
    x = _x(3)
    for body in (_infer_body(x, id="flat-1"), _infer_body(x, nested=True, id="nested-1"),
                 _infer_body(x[:1], id="params", parameters={"priority": 1, "timeout": 10_000_000,
                                                            "routing_key": "k", "group": "a"})):
        native, python = _both_paths(server, body)
        assert native[0] == python[0] == 200, (native, python)
        assert native[1]["content-type"] == python[1]["content-type"] == "application/json"
        got, want = json.loads(native[2]), json.loads(python[2])
        assert got == want  # model, version, id, output name, datatype, shape and values alike
        rows = np.asarray(got["outputs"][0]["data"], np.float32).reshape(got["outputs"][0]["shape"])
        np.testing.assert_allclose(rows, tiny_reference(x[:len(rows)]), rtol=1e-5, atol=1e-6)
    after = server.native_http.stats()
    assert after["served"] - before["served"] >= 3


# Refusals the native path answers itself (routing, the model's inputs) and ones it leaves to
# the Python decoder (whatever it does not take): each must be the Python path's, byte for byte.
BAD_REQUESTS = {
    "unknown model": dict(body=_infer_body(_x()), model="nope"),
    "unknown version": dict(body=_infer_body(_x()), version="7"),
    "unknown input": dict(body={"inputs": [{"name": "X", "shape": [1, 32], "datatype": "FP32", "data": [0.0] * 32}]}),
    "datatype not the model's": dict(body={"inputs": [{"name": "INPUT0", "shape": [1, 32], "datatype": "FP64",
                                                       "data": [0.0] * 32}]}),
    "shape not the model's": dict(body={"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32",
                                                    "data": [0.0] * 16}]}),
    "malformed JSON": dict(body=b'{"inputs": [{"name": "INPUT0",'),
    "a group past float64": dict(body=b'{"inputs": [{"name": "INPUT0", "shape": [1, 32], "datatype": "FP32", '
                                 b'"data": [' + b", ".join([b"0"] * 32) + b']}], "parameters": {"group": 1e400}}'),
    "data count not the shape's": dict(body={"inputs": [{"name": "INPUT0", "shape": [1, 32], "datatype": "FP32",
                                                        "data": [0.0] * 31}]}),
    "strings for FP32": dict(body={"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32",
                                               "data": ["a", "b"]}]}),
    "ragged nesting": dict(body={"inputs": [{"name": "INPUT0", "shape": [2, 2], "datatype": "FP32",
                                             "data": [[1.0, 2.0], [3.0]]}]}),
    "bad priority": dict(body={**_infer_body(_x()), "parameters": {"priority": -1}}),
    "unknown output": dict(body={**_infer_body(_x()), "outputs": [{"name": "nope"}]}),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_gets_the_python_paths_answer(server, case):
    native, python = _both_paths(server, **BAD_REQUESTS[case])
    assert 400 <= native[0] < 500
    assert (native[0], native[2]) == (python[0], python[2])
    assert native[1]["content-type"] == python[1]["content-type"]
    assert json.loads(native[2])["error"]


def test_tritonclient_json_and_binary(server, tiny_reference):
    client = httpclient.InferenceServerClient(server.url)
    x = _x(4, seed=3)
    before = server.native_http.stats()["served"]
    for binary in (False, True):  # JSON, and Triton's binary tensor extension: both native
        inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
        result = client.infer("mlp", [inp], outputs=[out], request_id=f"tc-{binary}")
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), tiny_reference(x), rtol=1e-5, atol=1e-6)
        assert result.get_response()["id"] == f"tc-{binary}"
    client.close()
    assert server.native_http.stats()["served"] - before >= 2


def _binary_request(json_part: dict, binary: bytes, json_length: int | None = None) -> bytes:
    head = json.dumps(json_part).encode()
    length = len(head) if json_length is None else json_length
    body = head + binary if json_length != 0 else binary
    return (f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\nInference-Header-Content-Length: {length}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


BINARY_REQUESTS = {
    "binary in, binary out": (_binary_request(
        {"id": "b1", "inputs": [{"name": "INPUT0", "shape": [2, 32], "datatype": "FP32",
                                 "parameters": {"binary_data_size": 256}}],
         "parameters": {"binary_data_output": True}}, _x(2).tobytes()), 200),
    "binary in, JSON out": (_binary_request(
        {"id": "b2", "inputs": [{"name": "INPUT0", "shape": [1, 32], "datatype": "FP32",
                                 "parameters": {"binary_data_size": 128}}],
         "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": False}}]}, _x(1).tobytes()), 200),
    "JSON in, binary out": (_binary_request(
        {"id": "b3", **_infer_body(_x()), "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]},
        b""), 200),
    "raw body": (_binary_request({}, _x(3).tobytes(), json_length=0), 200),
    "size not the shape's": (_binary_request(
        {"inputs": [{"name": "INPUT0", "shape": [1, 32], "datatype": "FP32",
                     "parameters": {"binary_data_size": 64}}]}, _x(1).tobytes()[:64]), 400),
    "bytes left over": (_binary_request(
        {"inputs": [{"name": "INPUT0", "shape": [1, 32], "datatype": "FP32",
                     "parameters": {"binary_data_size": 128}}]}, _x(2).tobytes()), 400),
    "raw body not whole rows": (_binary_request({}, _x(1).tobytes()[:100], json_length=0), 400),
}


@pytest.mark.parametrize("case", list(BINARY_REQUESTS))
def test_binary_tensors_answer_as_the_python_path(server, case):
    raw, status = BINARY_REQUESTS[case]
    native, python = native_and_python(server.port, raw)
    assert native[0] == python[0] == status, (native, python)
    for name in ("content-type", "inference-header-content-length"):
        assert native[1].get(name) == python[1].get(name), name
    if case == "raw body":  # answered in JSON, with an id made for feedback: each its own
        a, b = json.loads(native[2]), json.loads(python[2])
        assert a.pop("id") != b.pop("id") and a == b
    else:
        assert native[2] == python[2]  # byte for byte: binary data carries no float formatting


def test_keep_alive_pipelining_and_a_handoff_mid_connection(server):
    before = server.native_http.stats()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        # three requests in one write: answered in order, one at a time
        answers = Answers(sock)
        sock.sendall(b"".join(_request(_infer_body(_x(seed=i), id=f"p{i}")) for i in range(3)))
        ids = [json.loads(answers.next()[2])["id"] for _ in range(3)]
        assert ids == ["p0", "p1", "p2"]
        # another route on the same connection: handed to a front end with what was read
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, body = answers.next()
        assert (status, json.loads(body)) == (200, {"ready": True})
        # the connection is the front end's now, and keeps working
        sock.sendall(_request(_infer_body(_x(), id="after")))
        status, _, body = answers.next()
        assert status == 200 and json.loads(body)["id"] == "after"
    assert server.native_http.stats()["served"] - before["served"] >= 3
    # counted once the handoff thread's send returns, which may be after the front end answered
    wait_until(lambda: server.native_http.stats()["handed_off"] - before["handed_off"] >= 1,
               "the handoff counted")


def test_stats_and_metrics_count_what_the_native_path_served(server):
    def counts():
        status, _, body = server.request("GET", "/v2/models/mlp/stats")
        assert status == 200
        success = msgspec.json.decode(body)["model_stats"][0]["inference_stats"]["success"]["count"]
        status, _, text = server.request("GET", "/metrics")
        line = [ln for ln in text.decode().splitlines()
                if ln.startswith('loopserve_request_duration_seconds_count{model="mlp",version="1"}')]
        return success, float(line[0].split()[-1]) if line else 0.0

    success, latency = counts()
    native = server.native_http.stats()["served"]
    for i in range(5):
        status, _, _ = exchange(server.port, _request(_infer_body(_x(seed=i))))[0]
        assert status == 200
    assert server.native_http.stats()["served"] - native >= 5
    success2, latency2 = counts()
    assert success2 - success >= 5
    assert latency2 - latency >= 5
    text = server.request("GET", "/metrics")[2].decode()
    served = [ln for ln in text.splitlines() if ln.startswith("loopserve_native_http_requests_total ")]
    assert served and float(served[0].split()[-1]) >= 5
    assert 'loopserve_native_http_connections_total{outcome="handed_off"}' in text


def test_a_slow_client_goes_to_pythons_timers_and_others_are_served(model_repo, tmp_path):
    import shutil

    from loopserve.serving.repository import ModelRepository

    shutil.copytree(model_repo / "mlp_onnx", tmp_path / "models" / "mlp")
    repository = ModelRepository(tmp_path / "models")
    repository.load("mlp")
    running = RunningServer(LoopserveApp(repository), workers=2, native_infer=True,
                            http=HttpConfig(header_timeout_s=1.0, body_timeout_s=1.0))
    try:
        raw = _request(_infer_body(_x()))
        slow_head = socket.create_connection(("127.0.0.1", running.port), timeout=30)
        slow_head.sendall(raw[:20])  # half a request line, then nothing
        slow_body = socket.create_connection(("127.0.0.1", running.port), timeout=30)
        slow_body.sendall(raw[:-10])  # all but the body's last bytes
        for _ in range(3):  # meanwhile everyone else is served
            assert exchange(running.port, raw)[0][0] == 200
        for sock, what in ((slow_head, b"head"), (slow_body, b"body")):
            status, _, body = Answers(sock).next()  # Python's limits answer them, as without the native path
            assert status == 408 and what in body, body
            sock.close()
        wait_until(lambda: running.native_http.stats()["handed_off"] >= 2, "the slow clients handed off")
    finally:
        running.stop()
        repository.close()
