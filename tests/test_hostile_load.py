"""Hardening (issue 12) under load a client makes on purpose: one large JSON body must not stall
every other connection while it decodes. A real server on a loopback port, one process and an
engine with two front ends (fixture `serve`)."""

import http.client
import os
import socket
import threading
import time

import msgspec
import numpy as np

from loopserve import zoo
from loopserve.server.app import LoopserveApp
from test_hardening import infer_body


def post_while_others_ask(server, path, big, clients, metadata_too=False):
    """POSTs `big` to `path` while `clients` keep-alive connections (each connected, and so given
    a front end, first) keep asking for small infers, or infers and the model's metadata in
    turn. (status, body) of the big request; how many answers each client got meanwhile; each
    client's longest wait between answers, in seconds."""
    small = infer_body()
    sent_big, big_done = threading.Event(), threading.Event()
    answered_during: list[int] = []
    stamps: list[list[float]] = []

    def small_client():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        conn.request("POST", "/v2/models/mlp/infer", small)
        assert conn.getresponse().read()
        sent_big.wait(120)
        count = 0
        mine = [time.monotonic()]
        while not big_done.is_set():
            if metadata_too and count % 2:
                conn.request("GET", "/v2/models/mlp")
            else:
                conn.request("POST", "/v2/models/mlp/infer", small)
            response = conn.getresponse()
            assert response.status == 200, response.read()
            response.read()
            count += not big_done.is_set()
            mine.append(time.monotonic())
        conn.close()
        answered_during.append(count)
        stamps.append(mine)

    threads = [threading.Thread(target=small_client) for _ in range(clients)]
    for t in threads:
        t.start()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
    conn.putrequest("POST", path)
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(len(big)))
    conn.endheaders()
    conn.send(big)  # returns with the last few MB in the sockets' buffers: the server has it all moments later
    sent_big.set()
    response = conn.getresponse()  # once the server has answered (reading the answer takes a while)
    big_done.set()
    raw = response.read()
    conn.close()
    for t in threads:
        t.join(120)
    return response.status, raw, answered_during, [max(b - a for a, b in zip(m, m[1:])) for m in stamps]


def test_a_large_json_body_decodes_while_small_requests_are_answered(serve, mlp_repository):
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
    status, raw, answered_during, _ = post_while_others_ask(server, "/v2/models/mlp/infer", big, clients=6)
    # It decoded (then the model refused 100,000 rows: its max_batch_size is 64, a 400 that names it).
    assert status == 400 and b"batch" in raw, (status, raw[:300])
    # Every connection, whichever process it reached, was answered again and again meanwhile
    # (9-12 times each on a loaded box; a decode on the loop would allow one at most).
    assert len(answered_during) == 6 and min(answered_during) >= 5, answered_during
    assert server.request("POST", "/v2/models/mlp/infer", infer_body())[0] == 200


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def server_pids(server) -> list[int]:
    """This process (the one-process server, or the engine) and the front ends."""
    if server.engine is None:
        return [os.getpid()]
    return [os.getpid(), *(f.process.pid for f in server.engine.supervisor.frontends.values())]


def hostile_round(server, connections=40):
    """Idle connections, heads that never end, bodies that stall or run past the route's limit,
    and more connections than the server takes; every socket closed at the end."""
    head = b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\n"
    socks = []
    try:
        for i in range(connections):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            socks.append(sock)
            kind = i % 4
            try:
                if kind == 1:  # a head that never ends: 431 past max_header_bytes
                    sock.sendall(head + b"".join(b"X-Pad-%d: %s\r\n" % (j, b"a" * 200) for j in range(400)))
                elif kind == 2:  # a body that stops halfway: 408 after body_timeout_s
                    sock.sendall(head + b"Content-Length: 1000000\r\n\r\n" + b" " * 1000)
                elif kind == 3:  # a body far past the route's 64 KiB: 413
                    sock.sendall(head + b"Content-Length: 4000000\r\n\r\n" + b" " * 4_000_000)
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused and closed early, as it should be
        for sock in socks:  # the server answers and closes every one (its limits are 1 s): none held
            try:
                while sock.recv(65536):
                    pass
            except ConnectionResetError:
                pass
            except socket.timeout:
                raise AssertionError(f"the server held hostile connection {socks.index(sock)} open") from None
    finally:
        for sock in socks:
            sock.close()


def test_descriptors_and_memory_return_after_hostile_clients(serve, mlp_repository):
    """Point 1's measure: after a run of hostile connections closes, every server process holds
    the file descriptors it held before, and its memory has not grown by what the clients sent
    (about 50 MB a round here)."""
    from loopserve.server.config import HttpConfig

    limits = HttpConfig(header_timeout_s=1.0, body_timeout_s=1.0, keep_alive_s=1.0, max_header_bytes=16 << 10,
                        max_connections=16)
    server = serve(LoopserveApp(mlp_repository), http=limits)
    # The first round's and first request's one-time allocations (buffers, caches, threads) before the baseline.
    hostile_round(server)
    assert server.request("POST", "/v2/models/mlp/infer", infer_body())[0] == 200
    pids = server_pids(server)

    def fds_settle_at(expected) -> bool:
        deadline = time.monotonic() + 60  # a server closes its side as it reads each close
        # At most 4 above (a lazily opened file or thread's descriptor; a loaded CI run saw one):
        # what leaked per hostile connection would be hundreds.
        while any(fd_count(pid) > e + 4 for pid, e in zip(pids, expected)):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    time.sleep(2.5)  # past the 1 s limits: the baseline holds no connection of the warm-up
    baseline_fds = [fd_count(pid) for pid in pids]
    baseline_rss = [rss_bytes(pid) for pid in pids]
    for _ in range(3):
        hostile_round(server)
    assert server.request("POST", "/v2/models/mlp/infer", infer_body())[0] == 200
    assert fds_settle_at(baseline_fds), (pids, baseline_fds, [fd_count(pid) for pid in pids])
    grown = [rss_bytes(pid) - before for pid, before in zip(pids, baseline_rss)]
    assert max(grown) < 48 << 20, grown  # the rounds sent about 150 MB


LABELS = 1_300_000  # about 58 MB: joined on the loop, they stalled it for over a second (1.3 s here)


def test_a_large_feedback_body_is_decoded_and_joined_while_others_are_answered(serve, mlp_repository):
    """Point 6: a large feedback body was decoded (one msgspec call), joined and answered on the
    event loop: 19 MB stalled every client of the process that owns the feedback record (the
    engine, with front ends) for over a second; answering a million labels made it collect its
    garbage for another 0.3 s. Now a body past protocol.OFF_LOOP_BYTES is
    decoded in slices, joined in chunks and encoded on a worker thread; the labels it carries
    are answered as before. The other clients ask for infers and for the model's metadata (a
    route the engine's own loop answers, with front ends)."""
    server = serve(LoopserveApp(mlp_repository))
    infer_conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    predicted = []
    for i in range(3):
        request = msgspec.json.decode(infer_body())
        request["id"] = f"real-{i}"
        infer_conn.request("POST", "/v2/models/mlp/infer", msgspec.json.encode(request))
        assert infer_conn.getresponse().read()
        predicted.append(f"real-{i}")
    infer_conn.close()
    labels = [{"id": predicted[0], "label": 1}]
    labels += [{"id": f"unknown-{i:07d}-{'x' * 14}", "label": i % 2} for i in range(LABELS)]
    labels += [{"id": predicted[1], "label": 0}, {"id": predicted[0], "label": 0}]
    big = msgspec.json.encode({"labels": labels})
    del labels
    status, raw, answered_during, gaps = post_while_others_ask(server, "/v2/models/mlp/feedback", big, clients=4,
                                                               metadata_too=True)
    assert status == 200, raw[:300]
    result = msgspec.json.decode(raw)
    assert (result["joined"], result["unknown"], result["duplicate"]) == (2, LABELS, 1)
    items = result["items"]
    assert len(items) == LABELS + 3 and items[0] == {"id": "real-0", "status": "joined", "version": "1"}
    assert items[-2:] == [{"id": "real-1", "status": "joined", "version": "1"},
                          {"id": "real-0", "status": "duplicate", "version": "1"}]
    # Every connection, whichever process it reached, was answered again and again meanwhile,
    # never waiting long (here: 0.15 s at most, against 1.3 s before; the bound is for slow boxes).
    assert len(answered_during) == 4 and min(answered_during) >= 10, answered_during
    assert max(gaps) < 1.0, f"another client waited {max(gaps):.2f} s for an answer"
    # A large body must be the labels form alone (its array is found without decoding the rest).
    status, _, raw = server.request("POST", "/v2/models/mlp/feedback",
                                    msgspec.json.encode({"id": "real-2", "label": [0] * 600_000}))
    assert status == 400 and b'must be {\\"labels\\": [...]} with nothing else' in raw, raw[:300]


def test_memory_returns_after_many_large_bodies(serve, mlp_repository):
    """Point 5's measure, under repetition: 30 infer bodies of 4 MiB, on one keep-alive connection
    and on connections of their own (request ids far past the limit: each refused, 400), left the
    process that decoded them 70-130 MB larger for good. A body decoded off the loop and refused
    kept its exception, whose tracebacks' frames hold the body: in a cycle (the frame that took
    the decoding's result), and held by the request's connection objects (themselves a cycle):
    each body waited for a garbage collection, rare in a front end, and the heap grew past what
    it gave back. The refusal is now answered at once and the exception let go of."""
    from conftest import wait_until

    server = serve(LoopserveApp(mlp_repository))
    pids = server_pids(server)
    body = msgspec.json.encode({"id": "i" * (4 << 20), "inputs": msgspec.json.decode(infer_body())["inputs"]})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v2/models/mlp/infer", body)  # the first: what one body leaves behind
    assert conn.getresponse().read()
    before = sum(rss_bytes(pid) for pid in pids)
    for i in range(30):
        if i >= 15:  # then a connection each
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.request("POST", "/v2/models/mlp/infer", body)
        response = conn.getresponse()
        assert response.status == 400 and b"length <= 256" in response.read()
    conn.close()

    def grown():
        return sum(rss_bytes(pid) for pid in pids) - before

    wait_until(lambda: grown() < 40e6, "the server's RSS came back after 120 MB of refused bodies", timeout=20)
