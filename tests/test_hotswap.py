"""Versions behind one name: hot swap under load, failed loads, traffic splits, shadows,
the traffic API and the rollback rule, and memory over many load/unload cycles."""

import gc
import shutil
import textwrap
import time

import msgspec
import numpy as np
import pytest

from loopserve import Model, zoo
from loopserve.errors import InvalidInput
from loopserve.loadgen import ClientLoops
from loopserve.server.app import LoopserveApp
from loopserve.serving.canary import CanaryRule, VersionMetrics
from loopserve.serving.repository import ModelRepository
from loopserve.serving.router import VersionRouter

from conftest import vector_config, wait_until
from tcp_proxy import DroppingProxy

# No admission limit (max_queue_wait_us: 0): 32 client threads sharing the GIL with the model on
# a loaded machine can make batches slow enough for 429s, which are not what a swap test counts.
CONFIG = """\
max_batch_size: 16
dynamic_batching: {max_queue_delay_us: 200, max_queue_wait_us: 0}
inputs: [{name: x, datatype: FP32, dims: [1]}]
outputs: [{name: y, datatype: FP32, dims: [1]}]
"""


def write_version(model_dir, version, body=None):
    """A Python model whose answer is its own version number."""
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    (model_dir / str(version) / "model.py").write_text(body or textwrap.dedent(f"""
        def infer(inputs):
            return {{"y": inputs["x"] * 0 + {version}}}
    """))


def infer_body(value=1.0, **parameters):
    request = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [value]}]}
    if parameters:
        request["parameters"] = parameters
    return msgspec.json.encode(request)


@pytest.fixture
def repo(tmp_path):
    model_dir = tmp_path / "models" / "m"
    model_dir.mkdir(parents=True)
    (model_dir / "config.yaml").write_text(CONFIG)
    write_version(model_dir, 1)
    return tmp_path / "models"


ANSWERS = 3  # answers from the serving version each client has had before the next swap
PHASE_S = 0.5  # and the least time each version serves


def swap_under_load(repo, server, base_url, swaps, clients, during=None):
    """`clients` clients at base_url while `swaps` new versions are loaded one after another;
    `during(swap)` runs after each load. Before each load and before the clients stop, every
    client has been answered by the version serving at least ANSWERS times and PHASE_S has
    passed: each swap happens under load from all of them, however slow the machine (a fixed
    sleep left a slow machine's clients unanswered). Returns the tally and the versions each
    client saw."""
    seen = {i: [] for i in range(clients)}

    def check(client, body, _latency):
        answer = msgspec.json.decode(body)
        version = int(answer["model_version"])
        seen[client].append(version)
        if answer["outputs"][0]["data"] != [version]:
            return f"not answered by exactly version {version}: {answer}"
        return None

    def under_load_of(version):
        began, deadline = time.monotonic(), time.monotonic() + 120
        while time.monotonic() - began < PHASE_S or any(v[-ANSWERS:] != [version] * ANSWERS for v in seen.values()):
            assert time.monotonic() < deadline, f"not every client was answered by version {version}: " + \
                str({c: v[-ANSWERS:] for c, v in seen.items()})
            time.sleep(0.01)

    with ClientLoops(base_url, "/v2/models/m/infer", infer_body(), clients, on_answer=check) as loops:
        under_load_of(1)
        for swap, version in enumerate(range(2, 2 + swaps)):
            write_version(repo / "m", version)
            status, _, body = server.request("POST", "/v2/repository/models/m/load")
            assert status == 200, body
            if during:
                during(swap)
            under_load_of(version)
    return loops.tally, seen


def test_five_swaps_under_load_fail_no_request(serve, repo):
    repository = ModelRepository(repo)
    repository.load("m")
    server = serve(LoopserveApp(repository))
    tally, seen = swap_under_load(repo, server, server.base_url, swaps=5, clients=32)

    tally.assert_zero_loss()
    for versions in seen.values():
        assert versions == sorted(versions), "a client went back to an older version"
    assert {v for versions in seen.values() for v in versions} >= {1, 6}
    assert sorted(repository.router("m").versions) == [6], "old versions are unloaded"


def test_the_zero_loss_check_sees_a_connection_dropped_mid_swap(serve, repo):
    """A test of the test: a proxy resets one client connection during a swap; the same check
    must fail, with the dropped connection counted."""
    repository = ModelRepository(repo)
    repository.load("m")
    server = serve(LoopserveApp(repository))
    proxy = DroppingProxy(server.port)
    try:
        tally, _ = swap_under_load(repo, server, proxy.base_url, swaps=2, clients=8,
                                   during=lambda swap: proxy.drop_one() if swap == 0 else None)
    finally:
        proxy.stop()
    assert proxy.dropped == 1 and tally.connection_errors >= 1, tally.summary()
    assert tally.accounted == tally.sent and tally.crashed_clients == 0, tally.summary()
    with pytest.raises(AssertionError, match="connection errors"):
        tally.assert_zero_loss()


def test_a_failed_load_leaves_the_serving_version_serving(serve, repo):
    repository = ModelRepository(repo)
    repository.load("m")
    server = serve(LoopserveApp(repository))
    write_version(repo / "m", 2, "raise RuntimeError('weights file is corrupt')\n")
    status, _, body = server.request("POST", "/v2/repository/models/m/load")
    assert status == 400 and b"weights file is corrupt" in body
    status, _, body = server.request("POST", "/v2/models/m/infer", infer_body())
    assert status == 200 and msgspec.json.decode(body)["model_version"] == "1"
    index = msgspec.json.decode(server.request("POST", "/v2/repository/index")[2])
    assert {"name": "m", "version": "1", "state": "READY", "reason": ""} in index
    assert any(e["state"] == "UNAVAILABLE" and "weights file is corrupt" in e["reason"] for e in index)


def test_a_version_that_fails_its_warm_up_is_not_swapped_in(serve, repo):
    (repo / "m" / "config.yaml").write_text(CONFIG + "warmup_rows: [1, 4]\n")
    repository = ModelRepository(repo)
    repository.load("m")
    write_version(repo / "m", 2, textwrap.dedent("""
        def infer(inputs):
            raise ValueError("cannot run yet")
    """))
    server = serve(LoopserveApp(repository))
    status, _, body = server.request("POST", "/v2/repository/models/m/load")
    assert status == 400 and b"failed its warm-up" in body and b"cannot run yet" in body
    assert sorted(repository.router("m").versions) == [1]


def test_warm_up_runs_the_configured_sample(repo):
    np.savez(repo / "m" / "warmup.npz", x=np.array([[-1.0]], np.float32))
    (repo / "m" / "config.yaml").write_text(CONFIG + "warmup_file: warmup.npz\n")
    write_version(repo / "m", 1, textwrap.dedent("""
        def infer(inputs):
            if (inputs["x"] < 0).any():
                raise ValueError("negative amounts break this version")
            return {"y": inputs["x"]}
    """))
    with pytest.raises(Exception, match="failed its warm-up.*negative amounts break this version"):
        ModelRepository(repo).load("m")
    np.savez(repo / "m" / "warmup.npz", x=np.array([[2.0]], np.float32))
    assert sorted(ModelRepository(repo).load("m").versions) == [1]


def two_versions(weights=None, shadow=()):
    router = VersionRouter("ab")
    models = {v: Model.from_callable(lambda inputs, v=v: {"y": inputs["x"] * 0 + v},
                                     vector_config(name="ab", max_batch_size=8), version=v) for v in (1, 2)}
    router.install(models, weights, shadow)
    return router, models


def test_weights_90_10_split_and_keys_stick():
    router, models = two_versions({1: 90, 2: 10})
    assert router.stable == 1, "rollback of a canary returns to the version with the largest share"
    with pytest.raises(Exception, match="cannot both answer and shadow"):
        router.set_traffic({1: 1}, [1])
    counts = {1: 0, 2: 0}
    for _ in range(20_000):
        m = router.acquire()
        counts[m.version] += 1
        router.release(m)
    assert abs(counts[2] / 20_000 - 0.10) <= 0.015, counts
    for user in range(500):
        first = router.acquire(key=f"user-{user}")
        router.release(first)
        for _ in range(3):
            again = router.acquire(key=f"user-{user}")
            router.release(again)
            assert again is first
    router.unload()


def test_weights_near_the_float_maximum_split_and_non_finite_ones_are_refused():
    router, models = two_versions({1: 1e308, 2: 1e308})
    assert router.state().weights == {1: 0.5, 2: 0.5}
    assert [bound for bound, _ in router.answering()] == [0.5, 1.0]
    with pytest.raises(InvalidInput, match=r"must be finite numbers; version\(s\) \[2\] have \[inf\]"):
        router.set_traffic({1: 1, 2: float("inf")})
    assert router.state().weights == {1: 0.5, 2: 0.5}, "a refused change changes nothing"
    router.unload()


def test_routing_key_over_http_and_explicit_versions(serve):
    router, models = two_versions({1: 50, 2: 50})
    repository = ModelRepository()
    repository.routers["ab"] = router
    server = serve(LoopserveApp(repository))
    body = msgspec.json.encode({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}],
                                "parameters": {"routing_key": "alice"}})
    versions = {msgspec.json.decode(server.request("POST", "/v2/models/ab/infer", body)[2])["model_version"]
                for _ in range(20)}
    assert len(versions) == 1
    status, _, answer = server.request("POST", "/v2/models/ab/versions/2/infer", body)
    assert status == 200 and msgspec.json.decode(answer)["model_version"] == "2"


def test_shadow_sees_the_same_inputs_and_never_answers(serve):
    seen = {1: [], 2: []}

    def recorder(version):
        def fn(inputs):
            seen[version].extend(inputs["x"][:, 0].tolist())
            return {"y": inputs["x"] * 0 + version}
        return fn

    router = VersionRouter("s")
    router.install({v: Model.from_callable(recorder(v), vector_config(name="s", max_batch_size=8), version=v)
                    for v in (1, 2)}, {1: 1.0}, [2])
    repository = ModelRepository()
    repository.routers["s"] = router
    server = serve(LoopserveApp(repository))
    for i in range(20):
        body = msgspec.json.encode({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                                "data": [i] * 4}]})
        answer = msgspec.json.decode(server.request("POST", "/v2/models/s/infer", body)[2])
        assert answer["model_version"] == "1" and answer["outputs"][0]["data"] == [1] * 4
    deadline = time.monotonic() + 60  # the shadow answers after the caller: wait for it, generously
    while router.versions[2].stats().success < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(seen[2]) == sorted(seen[1]) == list(range(20))
    metrics = msgspec.json.decode(server.request("GET", "/v2/models/s/traffic")[2])["metrics"]
    assert metrics["2"]["requests"] == 20 and metrics["2"]["errors"] == 0


def test_traffic_api_needs_the_token_and_moves_traffic(serve, repo):
    write_version(repo / "m", 2)
    (repo / "m" / "config.yaml").write_text(CONFIG + "version_policy: {all: true}\n"
                                            "traffic: {weights: {1: 100}}\n")
    repository = ModelRepository(repo)
    repository.load("m")
    server = serve(LoopserveApp(repository, management_token="s3cret"))

    def change(body, token="s3cret"):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        status, _, answer = server.request("POST", "/v2/models/m/traffic", msgspec.json.encode(body), headers)
        return status, msgspec.json.decode(answer)

    def served():
        return {msgspec.json.decode(server.request("POST", "/v2/models/m/infer", infer_body())[2])["model_version"]
                for _ in range(40)}

    assert served() == {"1"}
    assert change({"weights": {"2": 100}}, token=None)[0] == 401
    assert change({"weights": {"2": 100}}, token="wrong")[0] == 401
    assert served() == {"1"}
    status, state = change({"weights": {"1": 50, "2": 50}})
    assert status == 200 and state["weights"] == {"1": 0.5, "2": 0.5}
    assert served() == {"1", "2"}
    status, state = change({"rollback": True})
    assert state["weights"] == {"1": 1.0} and served() == {"1"}
    status, state = change({"promote": 2})
    assert state["weights"] == {"2": 1.0} and state["stable"] == 2 and served() == {"2"}
    status, state = change({"weights": {"9": 1}})
    assert status == 400 and "no version 9 loaded" in state["error"]
    # Loading needs the token too.
    assert server.request("POST", "/v2/repository/models/m/load")[0] == 401


def test_rollback_rule():
    rule = CanaryRule(min_requests=100, max_error_rate_increase=0.01, max_p99_ratio=1.5)
    stable = VersionMetrics(1, requests=5000, errors=5, p99_s=0.002)
    assert rule.decide(stable, VersionMetrics(2, 50, 0, 0.002)).action == "wait"
    assert rule.decide(stable, VersionMetrics(2, 500, 0, 0.0025)).action == "promote"
    bad = rule.decide(stable, VersionMetrics(2, 500, 40, 0.002))
    assert bad.action == "rollback" and "8.00%" in bad.reason
    slow = rule.decide(stable, VersionMetrics(2, 500, 0, 0.005))
    assert slow.action == "rollback" and "2.50x" in slow.reason


def test_rollback_rule_on_live_metrics(serve, repo):
    write_version(repo / "m", 2, textwrap.dedent("""
        def infer(inputs):
            raise RuntimeError("canary is broken")
    """))
    (repo / "m" / "config.yaml").write_text(CONFIG + "version_policy: {all: true}\n"
                                            "traffic: {weights: {1: 80, 2: 20}}\n")
    repository = ModelRepository(repo)
    repository.load("m")
    server = serve(LoopserveApp(repository))
    for _ in range(300):
        server.request("POST", "/v2/models/m/infer", infer_body())
    metrics = msgspec.json.decode(server.request("GET", "/v2/models/m/traffic")[2])["metrics"]
    stable, canary = (msgspec.convert(metrics[v], VersionMetrics) for v in ("1", "2"))
    decision = CanaryRule(min_requests=20).decide(stable, canary)
    assert decision.action == "rollback" and canary.error_rate == 1.0


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_100_load_unload_cycles_return_their_memory(tmp_path):
    zoo.write_model_dir(tmp_path, "mlp", zoo.tiny_mlp(), fmt="onnx", max_batch_size=16)
    repository = ModelRepository(tmp_path)
    x = {"INPUT0": np.ones((2, 32), np.float32)}
    levels = []
    # The objects there already (torch, the suite's modules: seconds per full collection on a
    # loaded machine, 100 times) are frozen out of the collections; each cycle's are collected.
    gc.freeze()
    try:
        for cycle in range(100):
            router = repository.load("mlp")
            router.versions[1].infer_sync(x)
            repository.unload("mlp")
            gc.collect()
            if cycle in (0, 99):
                levels.append(rss_bytes())
    finally:
        gc.unfreeze()
    assert levels[1] <= levels[0] * 1.05, f"resident memory grew from {levels[0] >> 20} to {levels[1] >> 20} MiB"


def test_repository_changes_are_picked_up_without_a_restart(serve, repo):
    repository = ModelRepository(repo)
    repository.load("m")
    server = serve(LoopserveApp(repository, poll_s=0.1))

    def eventually(check, timeout=60):  # the poll is 0.1 s; a loaded machine loads slowly
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, "the change was not picked up"
            time.sleep(0.05)

    def version():
        return msgspec.json.decode(server.request("POST", "/v2/models/m/infer", infer_body())[2])["model_version"]

    write_version(repo / "m", 2)  # a new version: swapped in
    eventually(lambda: version() == "2")
    (repo / "m" / "config.yaml").write_text(CONFIG + "version_policy: {all: true}\ntraffic: {weights: {1: 1}}\n")
    eventually(lambda: version() == "1")  # a config change: traffic back on 1, both loaded
    assert sorted(repository.router("m").versions) == [1, 2]
    shutil.copytree(repo / "m", repo / "n")  # a new model directory: loaded
    eventually(lambda: server.request("GET", "/v2/models/n/ready")[0] == 200)
    write_version(repo / "m", 3, "raise ImportError('half-copied file')\n")  # a broken change: 1 serves on
    eventually(lambda: any("half-copied" in e["reason"] for e in
                           msgspec.json.decode(server.request("POST", "/v2/repository/index")[2])))
    assert version() == "1"


def test_a_traffic_change_that_outlives_its_model_leaves_the_reloaded_model_routed(serve, repo):
    """A traffic change whose body arrives after its model was unloaded and loaded again applies
    to the model loaded now; a late change to the old router (what the body-late request used to
    reach) leaves the native routing table alone."""
    import socket

    from loopserve.server.config import HttpConfig

    repository = ModelRepository(repo)
    repository.load("m")
    server = serve(LoopserveApp(repository), http=HttpConfig(native_infer=True))
    old_router = repository.routers["m"]
    body = b'{"weights": {}}'
    late = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    try:
        late.sendall(b"POST /v2/models/m/traffic HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        assert server.request("POST", "/v2/repository/models/m/unload")[0] == 200
        assert server.request("POST", "/v2/repository/models/m/load")[0] == 200
        late.sendall(body)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = late.recv(65536)
            assert chunk, f"connection closed after {answer!r}"
            answer += chunk
    finally:
        late.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert msgspec.json.decode(answer.split(b"\r\n\r\n", 1)[1])["versions"] == [1]
    status, _, reply = server.request("POST", "/v2/models/m/infer", infer_body())
    assert status == 200 and msgspec.json.decode(reply)["model_version"] == "1", reply

    # The root of it: a change to a router the name no longer serves (here from the test's thread,
    # nothing else changes routes meanwhile) does not unroute the live model.
    assert repository.routers["m"] is not old_router and not old_router.versions
    old_router.set_traffic({})
    status, _, reply = server.request("POST", "/v2/models/m/infer", infer_body())
    assert status == 200 and msgspec.json.decode(reply)["model_version"] == "1", reply


def test_a_retiring_version_answers_its_queue_before_its_unload_hooks_run(serve, tmp_path):
    """Requests queued on a version that a hot swap retires are answered by it and recorded for
    feedback, and its unload hooks run only after the last of them (requests the engine routed
    natively, which no Python router counts in flight, included)."""
    gate = tmp_path / "open"
    model_dir = tmp_path / "models" / "m"
    model_dir.mkdir(parents=True)
    (model_dir / "config.yaml").write_text(CONFIG.replace("max_batch_size: 16", "max_batch_size: 1"))
    write_version(model_dir, 1, textwrap.dedent(f"""
        import os, time
        def infer(inputs):
            while not os.path.exists({str(gate)!r}):  # held until the test opens the gate
                time.sleep(0.01)
            return {{"y": inputs["x"] * 0 + 1}}
    """))
    retired = []
    repository = ModelRepository(tmp_path / "models",
                                 on_version_unload=[lambda model: retired.append((model.version, model.stats().success))])
    repository.load("m")
    version_1 = repository.router("m").versions[1]
    server = serve(LoopserveApp(repository))
    ids = [f"queued-{i}" for i in range(6)]
    answers = {}

    def send(request_id):
        body = msgspec.json.encode({"id": request_id, "inputs": [{"name": "x", "shape": [1, 1],
                                                                  "datatype": "FP32", "data": [1.0]}]})
        status, _, reply = server.request("POST", "/v2/models/m/infer", body)
        answers[request_id] = (status, msgspec.json.decode(reply))

    import threading

    clients = [threading.Thread(target=send, args=(i,)) for i in ids]
    for client in clients:
        client.start()
    try:
        # one request runs (held at the gate), the others wait in version 1's queue
        wait_until(lambda: version_1.stats().queued >= len(ids) - 1, "version 1 holds every request")
        write_version(model_dir, 2)
        assert server.request("POST", "/v2/repository/models/m/load")[0] == 200
    finally:
        gate.touch()
        for client in clients:
            client.join(timeout=120)
    assert {i: (status, answer.get("model_version")) for i, (status, answer) in answers.items()} == \
        {i: (200, "1") for i in ids}
    wait_until(lambda: retired, "version 1 retired")
    assert retired == [(1, len(ids))], "the unload hooks ran before version 1 had answered its queue"
    status, _, reply = server.request("POST", "/v2/models/m/feedback",
                                      msgspec.json.encode({"labels": [{"id": i, "label": [1.0]} for i in ids]}))
    assert status == 200 and msgspec.json.decode(reply)["joined"] == len(ids), reply
