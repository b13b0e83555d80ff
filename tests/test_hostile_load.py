"""Hardening (issue 12) under load a client makes on purpose: one large JSON body must not stall
every other connection while it decodes. A real server on a loopback port, one process and an
engine with two front ends (fixture `serve`)."""

import http.client
import threading
import time

import msgspec
import numpy as np

from loopserve import zoo
from loopserve.server.app import LoopserveApp
from test_hardening import infer_body, mlp_repository  # noqa: F401 (a fixture)


def test_a_large_json_body_decodes_while_small_requests_are_answered(serve, mlp_repository):  # noqa: F811
    """Point 6: decoding ran on the event loop; a 51 MB JSON body stalled every client of that
    process for as long as it took (1.3 s). Now a body past protocol.OFF_LOOP_BYTES decodes on a
    worker thread, its data in slices: small requests on other connections of the same process
    keep being answered until the large one is. Six connections, so that with two front ends
    some share the large request's process."""
    server = serve(LoopserveApp(mlp_repository))
    rows = 100_000  # about 40 MB of JSON: the decode takes a good part of a second, or more
    data = np.random.default_rng(6).standard_normal(rows * 32).astype(np.float32).tolist()
    big = msgspec.json.encode({"inputs": [{"name": zoo.INPUT, "shape": [rows, 32], "datatype": "FP32", "data": data}]})
    del data
    small = infer_body()
    big_done = threading.Event()
    answered_during: list[int] = []

    def small_client():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        conn.request("POST", "/v2/models/mlp/infer", small)  # connected (and a front end chosen) first
        assert conn.getresponse().read()
        sent_big.wait(120)
        count = 0
        while not big_done.is_set():
            conn.request("POST", "/v2/models/mlp/infer", small)
            response = conn.getresponse()
            assert response.status == 200, response.read()
            response.read()
            count += not big_done.is_set()
        conn.close()
        answered_during.append(count)

    sent_big = threading.Event()
    clients = [threading.Thread(target=small_client) for _ in range(6)]
    for t in clients:
        t.start()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
    conn.putrequest("POST", "/v2/models/mlp/infer")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(len(big)))
    conn.endheaders()
    conn.send(big)
    sent_big.set()
    response = conn.getresponse()
    raw = response.read()
    big_done.set()
    conn.close()
    for t in clients:
        t.join(120)
    # It decoded (then the model refused 100,000 rows: its max_batch_size is 64, a 400 that names it).
    assert response.status == 400 and b"batch" in raw, (response.status, raw[:300])
    # Every connection, whichever process it reached, was answered again and again meanwhile.
    assert len(answered_during) == 6 and min(answered_during) >= 10, answered_during
    assert server.request("POST", "/v2/models/mlp/infer", small)[0] == 200
