"""Overload (server/admission.py): a server whose event loop runs later than
http.overload_wait_ms behind its requests refuses them at once, 429 with Retry-After, from
their heads; under moderate load it refuses nothing.

The backlog is made deterministic: the processes that hold the public port (the server at
workers 1, the front ends at workers 2) are stopped with SIGSTOP while every client sends a
request on a connection it already holds, and continued once the stall is longer than the
budget. Each request then has waited past the budget and is refused; every client gets an answer."""

import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import msgspec
import numpy as np
import pytest

from loopserve.demo.hotswap import wait_ready
from test_workers import ADD_ONE, INT_IO, children, free_port, until, write_model

CLIENTS = 48
MIN_CONNECTIONS = 8
BUDGET_MS = 50


def serve(tmp_path, workers: int, native_infer: bool | None = None):
    repo = write_model(tmp_path / "models", "add", ADD_ONE, "max_batch_size: 64\n" + INT_IO)
    config = tmp_path / "server.yaml"
    port = free_port()
    # keep_alive_s: the clients' connections stay open across the stall, however slow the box.
    config.write_text(f"model_repository: {repo}\nworkers: {workers}\nhttp:\n  port: {port}\n  keep_alive_s: 600\n"
                      f"  overload_wait_ms: {BUDGET_MS}\n  overload_min_connections: {MIN_CONNECTIONS}\n"
                      + ("" if native_infer is None else f"  native_infer: {str(native_infer).lower()}\n"))
    proc = subprocess.Popen([sys.executable, "-m", "loopserve.cli", "serve", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_ready(port, proc, timeout=120)
    if workers > 1:
        until(lambda: len(children(proc.pid)) == workers, what="the front ends")
    return proc, port


BODY = msgspec.json.encode({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "INT32", "data": [41]}]})


def ask(conn: http.client.HTTPConnection, path: str):
    conn.request("POST", path, body=BODY)
    r = conn.getresponse()
    return r.status, r.getheader("retry-after"), msgspec.json.decode(r.read())


def served(conn: http.client.HTTPConnection, path: str) -> int:
    """Asks until answered 200 (a loaded box may stall the server past the budget while this
    many clients are connected); returns how many times it was refused 429 first."""
    deadline, refused = time.monotonic() + 60, 0
    while (status := ask(conn, path)[0]) != 200:
        assert status == 429 and time.monotonic() < deadline, f"answered {status}, not 200"
        refused += 1
    return refused


def refused_counter(port: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    match = re.search(r'^loopserve_overload_refused_total\{model="add"\} (\S+)$', text, re.M)
    return float(match[1]) if match else 0.0


def stalled_round(port: int, public: list[int], path: str) -> tuple[list[tuple], int]:
    """Every client sends one request while the processes in `public` are stopped; returns
    the answers once they are continued after a stall past the budget, and the refusals met
    before the stall."""
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=120) for _ in range(CLIENTS)]
    # Connected and served once: the requests below wait in their sockets.
    before = sum(served(conn, path) for conn in conns)
    answers, sent = [], threading.Semaphore(0)

    def client(conn):
        conn.request("POST", path, body=BODY)
        sent.release()
        r = conn.getresponse()
        answers.append((r.status, r.getheader("retry-after"), msgspec.json.decode(r.read())))

    for pid in public:
        os.kill(pid, signal.SIGSTOP)
    try:
        threads = [threading.Thread(target=client, args=(c,)) for c in conns]
        for t in threads:
            t.start()
        for _ in conns:
            assert sent.acquire(timeout=60), "a client could not send"
        time.sleep(4 * BUDGET_MS / 1e3)  # at least this long: every request waits past the budget
    finally:
        for pid in public:
            os.kill(pid, signal.SIGCONT)
    for t in threads:
        t.join(timeout=120)
    for conn in conns:
        conn.close()
    assert len(answers) == CLIENTS, "every client gets an answer"
    return answers, before


@pytest.mark.parametrize("workers,native_infer", [(1, None), (2, False), (2, True)],
                         ids=["workers1", "workers2python", "workers2native"])
def test_requests_that_waited_past_the_budget_are_refused_429_on_both_routes(tmp_path, workers, native_infer):
    proc, port = serve(tmp_path, workers, native_infer)
    try:
        # Who holds the port: the one process, the front ends, or the engine's native loop.
        public = sorted(children(proc.pid)) if workers > 1 and not native_infer else [proc.pid]
        refused = 0
        # The fast path, then the ASGI route (a %-escaped model name: "%61dd" is "add"); the
        # native loop answers the first and hands the second to a front end, not stalled here.
        paths = ("/v2/models/add/infer",) if native_infer else ("/v2/models/add/infer", "/v2/models/%61dd/infer")
        for path in paths:
            answers, refused_before = stalled_round(port, public, path)
            ok = [a for a in answers if a[0] == 200]
            no = [a for a in answers if a[0] != 200]
            assert all(a[2]["outputs"][0]["data"] == [42] for a in ok)
            assert no, f"{path}: nothing refused after a stall past the budget"
            for status, retry_after, body in no:
                assert (status, retry_after) == (429, "1")
                assert "overload_wait_ms" in body["error"]
            refused += refused_before + len(no)
            # Once the stall is over (and the clients gone), the server serves again.
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            refused += served(conn, path)
            conn.close()
        assert refused_counter(port) == refused
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]


def test_moderate_load_is_never_refused(serve, model_repo, tmp_path):
    """Fewer clients than overload_min_connections, with the defaults: nothing is refused,
    whatever the box's scheduling does to the loop; and the count of requests in flight returns
    to zero (requests refused 400 after their heads included)."""
    from loopserve.server.app import LoopserveApp
    from loopserve.serving.repository import ModelRepository

    shutil.copytree(model_repo / "mlp_onnx", tmp_path / "models" / "tiny")
    repository = ModelRepository(tmp_path / "models")
    repository.load("tiny")
    app = LoopserveApp(repository)
    server = serve(app)
    x = np.zeros((1, 32), np.float32).tolist()
    good = msgspec.json.encode({"inputs": [{"name": "INPUT0", "shape": [1, 32], "datatype": "FP32", "data": x}]})
    statuses = []

    def client(k):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        for i in range(60):
            conn.request("POST", "/v2/models/tiny/infer", body=b"{not json" if i % 10 == k else good)
            r = conn.getresponse()
            r.read()
            statuses.append(r.status)
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(statuses)) == [200, 400]
    assert statuses.count(400) == 48
    status, _, body = server.request("GET", "/metrics")
    assert status == 200
    assert b"loopserve_overload_refused_total{" not in body  # no model has a refusal
    if server.workers == 1:
        assert app.infer.admission.in_flight == 0
