"""What the review of the HTTP front end found (2026-12-05), each fixed alike at workers 1 and
workers 2 (the engine's native infer path, and the front ends' Python one): client mistakes are
a 4xx that says what was wrong, errors name no server directory, and the server serves on.
One server per mode for the whole module: each test is a few requests."""

import json
import socket
import time

import msgspec
import pytest

from conftest import PythonPathWorkers, RunningServer
from helpers_http import Answers
from loopserve.server.app import LoopserveApp

DOUBLE = """def infer(inputs):
    return {"y": inputs["x"] * 2}
"""
FAILING = """def infer(inputs):
    raise RuntimeError(f"cannot read {__file__}")
"""


def _model_dir(root, name: str, source: str) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.yaml").write_text(
        f"name: {name}\nmax_batch_size: 8\ninputs:\n  - {{name: x, datatype: FP32, dims: [4]}}\n"
        "outputs:\n  - {name: y, datatype: FP32, dims: [4]}\n")
    (root / name / "1" / "model.py").write_text(source)


MODES = dict(params=[1, 2, PythonPathWorkers(2)], ids=["workers1", "workers2", "workers2python"])


def _start(tmp_path_factory, mode, http=None, **app_settings) -> RunningServer:
    from loopserve.serving.repository import ModelRepository

    work = tmp_path_factory.mktemp("review")
    root = work / "models"
    _model_dir(root, "double", DOUBLE)
    _model_dir(root, "failing", FAILING)
    repository = ModelRepository(root)
    repository.load("double")
    repository.load("failing")
    running = RunningServer(LoopserveApp(repository, max_body_bytes=1 << 20, store=str(work / "store"), **app_settings), workers=int(mode), http=http,
                            native_infer=getattr(mode, "native", None))
    running.repository, running.work = repository, work
    return running


def _stop(running: RunningServer) -> None:
    running.stop()
    running.repository.close()


@pytest.fixture(scope="module", **MODES)
def server(tmp_path_factory, request):
    running = _start(tmp_path_factory, request.param)
    yield running
    _stop(running)


@pytest.fixture(scope="module", **MODES)
def overloaded(tmp_path_factory, request):
    """A server that counts itself overloaded at every request: one open connection is enough,
    and its loop is always later than a microsecond."""
    from loopserve.server.config import HttpConfig

    overload = dict(overload_min_connections=1, overload_wait_ms=0.001)
    running = _start(tmp_path_factory, request.param, HttpConfig(**overload), **overload)
    yield running
    _stop(running)


def _infer(server, model="double", datatype="FP32", inputs=None, **extra):
    inputs = inputs or [{"name": "x", "shape": [1, 4], "datatype": datatype, "data": [1, 2, 3, 4]}]
    return server.request("POST", f"/v2/models/{model}/infer", json.dumps({"inputs": inputs, **extra}).encode(),
                          {"Content-Type": "application/json"})


def _error(answer, status: int) -> str:
    code, headers, body = answer
    assert code == status, body
    assert headers["content-type"] == "application/json"
    return msgspec.json.decode(body)["error"]


def _assert_serves(server):
    code, _, body = _infer(server)
    assert code == 200, body
    assert msgspec.json.decode(body)["outputs"][0]["data"] == [2, 4, 6, 8]


def test_a_datatype_or_input_count_the_server_cannot_carry_is_a_400(server):
    """Finding 2: at workers 2 the channel to the engine refused these with a TypeError or
    ValueError, answered 500 as the server's own failure."""
    assert "BF16" in _error(_infer(server, datatype="BF16"), 400)
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "BF16",
                                     "parameters": {"binary_data_size": 8}}]}).encode()
    answer = server.request("POST", "/v2/models/double/infer", header + bytes(8),
                            {"Inference-Header-Content-Length": str(len(header))})
    assert "BF16" in _error(answer, 400)
    many = [{"name": f"x{i}", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]} for i in range(300)]
    _error(_infer(server, inputs=many), 400)
    _assert_serves(server)


def test_a_group_longer_than_256_bytes_is_refused(server):
    """Finding 3: parameters.group is kept with each prediction, so it is bounded like the id."""
    message = _error(_infer(server, parameters={"group": "g" * 255}), 400)  # 257 bytes as JSON
    assert "parameter 'group'" in message and "256" in message, message
    message = _error(_infer(server, parameters={"group": {"k": ["v" * 300]}}), 400)
    assert "parameter 'group'" in message, message
    code, _, body = _infer(server, parameters={"group": "g" * 254})  # 256 bytes as JSON
    assert code == 200, body
    _assert_serves(server)


def test_a_routing_key_longer_than_1024_bytes_is_refused_in_every_path(server):
    """A 70 KB key was a 200 in one process and a 400 past the rings' 16-bit lengths."""
    message = _error(_infer(server, parameters={"routing_key": "k" * 1025}), 400)
    assert "parameter 'routing_key'" in message and "1024" in message, message
    _error(_infer(server, parameters={"routing_key": "k" * 70_000}), 400)
    code, _, body = _infer(server, parameters={"routing_key": "é" * 512})  # 1024 bytes in UTF-8
    assert code == 200, body
    _assert_serves(server)


def test_a_model_failure_names_no_server_directory_and_no_traceback(server):
    """Finding 5: at workers 2 a model's failure reached the client with the repository's path
    and the traceback (the server's files)."""
    message = _error(_infer(server, model="failing"), 500)
    assert message == "RuntimeError: cannot read <model_repository>/failing/1/model.py", message
    _assert_serves(server)


def test_under_overload_a_model_not_served_is_a_404_and_not_counted(overloaded):
    """Finding 6: at workers 2 a request for any made-up model name was refused 429 and counted
    under that name, a new metrics series per name a client sends."""
    made_up = [f"nosuch{i:03d}" for i in range(20)]
    for name in made_up:
        assert "unknown model" in _error(_infer(overloaded, model=name), 404)
    # The server does count itself overloaded (its loop later than a microsecond: almost every
    # request, but on a loaded box not within any fixed number of them).
    deadline = time.monotonic() + 60
    while _infer(overloaded)[0] != 429:
        assert time.monotonic() < deadline, "no request was refused 429 in 60 s"
    code, _, metrics = overloaded.request("GET", "/metrics")
    assert code == 200
    refused = [line for line in metrics.decode().splitlines() if line.startswith("loopserve_overload_refused")]
    assert refused and not any("nosuch" in line for line in refused), refused


def test_promote_refuses_a_large_body_before_reading_it_all(server):
    """Finding 4: at workers 1 the UI's promote route read any body whole before refusing it."""
    code, _, body = server.request("POST", "/ui/api/models/double/promote", b" " * (200 << 10),
                                   {"Content-Type": "application/json"})
    assert code == 413, body
    assert "65536 bytes" in msgspec.json.decode(body)["error"]
    code, _, body = server.request("POST", "/ui/api/models/double/promote", b'{"version": 1}')
    assert code == 200, body


def test_an_unknown_run_names_the_store_by_its_setting(server):
    """Finding 13: the UI's run route answered its 404 with the store's absolute path (and read
    ./.loopserve, not the configured store)."""
    message = _error(server.request("GET", "/ui/api/runs/nosuchrun"), 404)
    assert "<store>" in message and str(server.work) not in message, message


def test_a_client_that_half_closes_after_its_requests_gets_every_answer(server):
    """Finding 8: a client may shut down its sending side once its requests are sent (RFC 9112
    §9.6); the Python paths closed the connection at that end of file and dropped the answers."""
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
    infer = f"POST /v2/models/double/infer HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    metadata = "GET /v2/models/double HTTP/1.1\r\nHost: t\r\n\r\n"
    for requests in ([infer], [metadata], [infer, metadata, infer]):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall("".join(requests).encode())
            sock.shutdown(socket.SHUT_WR)
            answers = Answers(sock)
            statuses = [answers.next()[0] for _ in requests]
            assert statuses == [200] * len(requests)
            assert sock.recv(1) == b""  # then the server closes


def _raw(server, request: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    """(status line, headers as sent, body) of one request on a connection the server closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    return status, [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines)], body


def test_forwarded_routes_answer_as_in_one_process(server):
    """Findings 7 and 12: what the front ends' forward to the engine changed (workers 2)."""
    # A trailing slash redirects to the client's own host, not the engine's socket.
    code, headers, _ = server.request("GET", "/v2/models/double/", headers={"Host": "client.example:8123"})
    assert (code, headers["location"]) == (307, "http://client.example:8123/v2/models/double")
    # One date header; HEAD says the length GET's body has.
    close = b"Host: t\r\nConnection: close\r\n\r\n"
    status, headers, body = _raw(server, b"GET /v2/health/live HTTP/1.1\r\n" + close)
    assert status.startswith("HTTP/1.1 200") and [k for k, _ in headers].count("date") == 1, headers
    status, head_headers, _ = _raw(server, b"HEAD /v2/health/live HTTP/1.1\r\n" + close)
    assert dict(head_headers)["content-length"] == str(len(body)) != "0", head_headers
    # The path as sent: dot segments are no route (not resolved into another model's).
    status, _, body = _raw(server, b"GET /v2/models/failing/../double/ready HTTP/1.1\r\n" + close)
    assert status.startswith("HTTP/1.1 404"), (status, body)
    # A route that reads no body answers whatever body came with it.
    code, _, body = server.request("GET", "/v2/models/double", b"x" * (100 << 10))
    assert code == 200, body


def test_a_feedback_body_over_max_body_bytes_is_a_413(server):
    """Finding 11: at workers 1 feedback took 64 MiB whatever http.max_body_bytes said (1 MiB here)."""
    labels = b'{"labels": [' + b",".join([b'{"id": "r", "label": 1}'] * 100_000) + b"]}"  # 2.4 MB
    message = _error(server.request("POST", "/v2/models/double/feedback", labels), 413)
    assert f"{1 << 20} bytes" in message, message
    code, _, body = server.request("POST", "/v2/models/double/feedback", b'{"labels": [{"id": "r", "label": 1}]}')
    assert code == 200, body


def test_a_version_with_leading_zeros_is_the_same_version_in_every_path(server):
    """Finding 14: /versions/000...01 (more than 18 digits) was version 1 at workers 1, 404 at workers 2."""
    path = "/v2/models/double/versions/" + "0" * 22 + "1/infer"
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
    code, _, answer = server.request("POST", path, body.encode())
    assert code == 200, answer
    assert msgspec.json.decode(answer)["model_version"] == "1"
    message = _error(server.request("POST", "/v2/models/double/versions/" + "9" * 19 + "/infer", body.encode()), 404)
    assert "has no version" in message, message


def test_a_load_with_a_config_or_files_is_refused_not_ignored(server):
    """Finding 10: Triton's load with parameters.config (or files) was answered 200, the override
    ignored; a body over 64 KiB was 413 at workers 2 only."""
    load = "/v2/repository/models/failing/load"
    config = {"parameters": {"config": json.dumps({"max_batch_size": 2})}}
    assert "parameters config is not supported" in _error(server.request("POST", load, json.dumps(config).encode()), 400)
    files = {"parameters": {"file:1/model.py": "A" * (100 << 10)}}
    _error(server.request("POST", load, json.dumps(files).encode()), 413)
    assert "JSON object" in _error(server.request("POST", load, b"[1]"), 400)
    for body in (b"", b'{"parameters": {}}'):
        code, _, answer = server.request("POST", load, body)
        assert code == 200, answer


def test_a_compressed_infer_body_is_a_415_that_names_the_encoding(server):
    """Finding 9: a gzip body (tritonclient's request_compression_algorithm) was parsed as it
    came, and refused as malformed JSON or a bad binary header length."""
    import gzip

    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).encode()
    for encoding in ("gzip", "deflate"):
        answer = server.request("POST", "/v2/models/double/infer", gzip.compress(body),
                                {"Content-Encoding": encoding})
        assert f"content encoding '{encoding}' is not supported" in _error(answer, 415)
    code, _, answer = server.request("POST", "/v2/models/double/infer", body, {"Content-Encoding": "identity"})
    assert code == 200, answer
