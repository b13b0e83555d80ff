"""Hardening (issue 12) of `loopserve serve` as a process: SIGTERM while clients stall mid-body,
and the file descriptors and memory a hostile client run leaves behind. One process and an
engine with two front ends."""

import shutil
import signal
import socket
import time

import pytest

from loopserve.demo.hotswap import wait_ready
from test_server_process import free_port, loopserve

HEAD = b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


@pytest.fixture(params=[1, 2], ids=["workers1", "workers2"])
def workers(request):
    return request.param


def start(tmp_path, model_repo, workers, http_yaml):
    shutil.copytree(model_repo / "mlp_onnx", tmp_path / "models" / "mlp")
    (tmp_path / "server.yaml").write_text(f"model_repository: models\nworkers: {workers}\nhttp: {http_yaml}\n")
    port = free_port()
    proc = loopserve("serve", "--config", str(tmp_path / "server.yaml"), "--port", str(port))
    try:
        wait_ready(port, proc, timeout=120)
    except RuntimeError:
        proc.kill()
        raise RuntimeError(proc.communicate()[1][-3000:]) from None
    return proc, port


def served(port) -> bool:
    body = b'{"inputs":[{"name":"INPUT0","shape":[1,32],"datatype":"FP32","data":[%s]}]}' % b",".join([b"0.5"] * 32)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(HEAD + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer.startswith(b"HTTP/1.1 200")


def test_sigterm_does_not_wait_for_bodies_that_never_arrive(tmp_path, model_repo, workers):
    """Point 8: a request stalled mid-body held SIGTERM's drain for graceful_shutdown_s (30 s).
    Now such a request is answered 503 at once and the server exits well inside its deadline
    (60 s here, and a body timeout of 120 s: neither may be what ends it)."""
    proc, port = start(tmp_path, model_repo, workers, "{graceful_shutdown_s: 60, body_timeout_s: 120}")
    try:
        stalled = []
        for _ in range(4):  # with two front ends, some on each
            sock = socket.create_connection(("127.0.0.1", port), timeout=90)
            sock.sendall(HEAD + b"Content-Length: 100000\r\n\r\n{\"inputs\": [")
            stalled.append(sock)
        assert served(port)  # the server reads heads and serves meanwhile
        time.sleep(1.0)  # (only so the stalled heads surely arrived: the check below needs no timing)
        start_s = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
        took = time.monotonic() - start_s
        assert proc.returncode == 0, err[-3000:]
        assert took < 30, (took, err[-3000:])  # not the 60 s drain deadline, nor the 120 s body timeout
        for sock in stalled:
            answer = sock.recv(65536)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 503"), answer[:200]
            sock.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
