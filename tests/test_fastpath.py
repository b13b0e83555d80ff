"""The infer route's fast path (server/fastpath.py) against a real server on a loopback port,
in one process and with two front ends: the same answers as the ASGI route, pipelining,
keep-alive, Expect: 100-continue, bodies in pieces, and routes of both kinds on one connection.

A %-escaped path is left to ASGI by the fast path (uvicorn unescapes it), which is how these
tests reach the ASGI infer route of the same server for comparison."""

import re
import shutil
import socket
import struct

import msgspec
import pytest

from loopserve import zoo
from loopserve.server.app import LoopserveApp
from loopserve.serving.repository import ModelRepository

TOKEN = "fast-path-token"
FAST = "/v2/models/mlp/infer"
ASGI = "/v2/models/ml%70/infer"  # the same route, through ASGI
MAX_BODY = 64 << 10


@pytest.fixture
def server(serve, model_repo, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(model_repo / "mlp_onnx", root / "mlp")
    repository = ModelRepository(root)
    repository.load("mlp")
    return serve(LoopserveApp(repository, max_body_bytes=MAX_BODY, management_token=TOKEN))


def json_body(request_id="r", rows=1, datatype="FP32"):
    return msgspec.json.encode({"id": request_id, "inputs": [
        {"name": zoo.INPUT, "shape": [rows, 32], "datatype": datatype, "data": [0.25] * (32 * rows)}]})


def binary_body():
    header = msgspec.json.encode({"id": "b", "inputs": [{"name": zoo.INPUT, "shape": [1, 32], "datatype": "FP32",
                                                         "parameters": {"binary_data_size": 128}}],
                                  "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]})
    return header + struct.pack("<32f", *([0.5] * 32)), len(header)


def request_bytes(path, body=b"", headers=(), method="POST", version="HTTP/1.1"):
    head = [f"{method} {path} {version}", "Host: test"]
    head += [f"{k}: {v}" for k, v in headers]
    if not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Reader:
    """Reads HTTP/1.1 answers one after another from one connection."""

    def __init__(self, sock):
        self.file = sock.makefile("rb")

    def answer(self):
        """(status, {header: value}, body); None once the server closed the connection."""
        line = self.file.readline()
        if not line:
            return None
        status = int(line.split()[1])
        headers = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = self.file.read(int(headers.get("content-length", 0))) if status >= 200 else b""
        return status, headers, body

    def closed(self) -> bool:
        return self.file.read(1) == b""


def connect(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    return sock, Reader(sock)


def one(server, raw: bytes):
    sock, reader = connect(server)
    with sock:
        sock.sendall(raw)
        return reader.answer()


def comparable(answer):
    """An answer without what differs from one request to the next: its date, and the random
    id made for a request that sent none."""
    status, headers, body = answer
    headers = {k: v for k, v in headers.items() if k != "date"}
    return status, headers, re.sub(rb'"id":"[0-9a-f]{32}"', b'"id":"(made)"', body)


def test_the_fast_path_answers_as_the_asgi_route_does(server):
    binary, header_length = binary_body()
    cases = {
        "json": (json_body(), [("Content-Type", "application/json")]),
        "binary": (binary, [("Inference-Header-Content-Length", str(header_length))]),
        "raw binary": (struct.pack("<32f", *([0.5] * 32)), [("Inference-Header-Content-Length", "0")]),
        "bad json": (b'{"inputs": [', []),
        "empty body": (b"", []),
        "wrong datatype": (json_body(datatype="INT32"), []),
        "bad header length": (json_body(), [("Inference-Header-Content-Length", "abc")]),
        "header length past the body": (json_body(), [("Inference-Header-Content-Length", "100000")]),
        "declared too large": (b"x" * (MAX_BODY + 1), []),
    }
    for case, (body, headers) in cases.items():
        fast = one(server, request_bytes(FAST, body, headers))
        asgi = one(server, request_bytes(ASGI, body, headers))
        assert comparable(fast) == comparable(asgi), case
        assert "date" in fast[1], case  # uvicorn's default headers, as on every route
        if fast[0] != 200:
            assert fast[1]["content-type"] == "application/json" and msgspec.json.decode(fast[2])["error"], case
    assert one(server, request_bytes(FAST, json_body()))[0] == 200
    # The model or version named in the path.
    for path in ("/v2/models/nope/infer", "/v2/models/mlp/versions/7/infer"):
        fast = one(server, request_bytes(path, json_body()))
        asgi = one(server, request_bytes(path.replace("/infer", "/inf%65r"), json_body()))
        assert fast[0] == 404 and comparable(fast) == comparable(asgi), path
    assert one(server, request_bytes("/v2/models/mlp/versions/1/infer", json_body()))[0] == 200

    # A chunked body over the limit: 413 once it passes the limit, whichever route.
    chunk = b"x" * 8192
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY // len(chunk) + 2)) + b"0\r\n\r\n"
    answers = [one(server, request_bytes(path, chunked, [("Transfer-Encoding", "chunked")])) for path in (FAST, ASGI)]
    assert answers[0][0] == 413 and comparable(answers[0]) == comparable(answers[1])


def test_pipelined_requests_are_answered_in_order_and_the_connection_lives_on(server):
    binary, header_length = binary_body()
    sock, reader = connect(server)
    with sock:
        # Six requests in one write: infer, another route, refusals, binary, infer again.
        sock.sendall(request_bytes(FAST, json_body("first"))
                     + request_bytes("/v2/health/ready", method="GET")
                     + request_bytes(FAST, b"{not json")
                     + request_bytes(FAST, binary, [("Inference-Header-Content-Length", str(header_length))])
                     + request_bytes("/v2/models/nope/infer", json_body())
                     + request_bytes(ASGI, json_body("last")))
        answers = [reader.answer() for _ in range(6)]
        assert [a[0] for a in answers] == [200, 200, 400, 200, 404, 200], answers
        assert msgspec.json.decode(answers[0][2])["id"] == "first"
        assert msgspec.json.decode(answers[1][2]) == {"ready": True}
        json_part = int(answers[3][1]["inference-header-content-length"])
        assert msgspec.json.decode(answers[3][2][:json_part])["id"] == "b" and len(answers[3][2]) == json_part + 8
        assert msgspec.json.decode(answers[5][2])["id"] == "last"

        # Keep-alive: the same connection serves on; a body in pieces is read whole.
        raw = request_bytes(FAST, json_body("pieces"))
        for start in range(0, len(raw), 50):
            sock.sendall(raw[start:start + 50])
        answer = reader.answer()
        assert answer[0] == 200 and msgspec.json.decode(answer[2])["id"] == "pieces"

        # Expect: 100-continue: the interim answer, then the body, then the answer.
        body = json_body("continued")
        sock.sendall(request_bytes(FAST, headers=[("Expect", "100-continue"), ("Content-Length", str(len(body)))]))
        assert reader.answer()[0] == 100
        sock.sendall(body)
        answer = reader.answer()
        assert answer[0] == 200 and msgspec.json.decode(answer[2])["id"] == "continued"

        # Connection: close is honoured: the answer says so and the connection closes.
        sock.sendall(request_bytes(FAST, json_body("bye"), [("Connection", "close")]))
        answer = reader.answer()
        assert answer[0] == 200 and answer[1]["connection"] == "close"
        assert reader.closed()

    # HTTP/1.0 has no keep-alive unless asked for.
    sock, reader = connect(server)
    with sock:
        sock.sendall(request_bytes(FAST, json_body("old"), version="HTTP/1.0"))
        answer = reader.answer()
        assert answer[0] == 200 and answer[1]["connection"] == "close" and reader.closed()


def test_infer_and_guarded_routes_share_a_connection_and_the_token_still_guards(server):
    sock, reader = connect(server)
    with sock:
        def send(raw):
            sock.sendall(raw)
            return reader.answer()

        assert send(request_bytes(FAST, json_body()))[0] == 200  # infer needs no token, as before
        refused = send(request_bytes("/v2/repository/models/mlp/load"))
        assert refused[0] == 401 and refused[1]["www-authenticate"] == "Bearer"
        assert send(request_bytes("/v2/repository/models/mlp/load", headers=[("Authorization", "Bearer nope")]))[0] == 401
        assert send(request_bytes("/v2/repository/models/mlp/load",
                                  headers=[("Authorization", f"Bearer {TOKEN}")]))[0] == 200
        for i in range(20):
            answer = send(request_bytes(FAST, json_body(f"after-{i}")))
            assert answer[0] == 200 and msgspec.json.decode(answer[2])["id"] == f"after-{i}"
        # The fast path's requests are in the latency histogram /metrics shows.
        metrics = send(request_bytes("/metrics", method="GET"))[2].decode()
        count = re.search(r'loopserve_request_duration_seconds_count\{model="mlp",version="1"\} (\S+)', metrics)
        assert count is not None and float(count[1]) >= 21, metrics[-2000:]
