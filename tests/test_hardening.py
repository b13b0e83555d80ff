"""Hardening (issue 12): what a hostile client or an unlucky operator does to a real server on a
loopback port, one process and an engine with two front ends (fixture `serve`)."""

import random
import shutil
import threading

import msgspec
import pytest

from loopserve import zoo
from loopserve.server.app import LoopserveApp
from loopserve.serving.repository import ModelRepository

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def infer_body(rows=1, **parameters):
    request = {"inputs": [{"name": zoo.INPUT, "shape": [rows, 32], "datatype": "FP32", "data": [0.1] * (32 * rows)}]}
    if parameters:
        request["parameters"] = parameters
    return msgspec.json.encode(request)


@pytest.fixture
def mlp_repository(model_repo, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(model_repo / "mlp_onnx", root / "mlp")
    repository = ModelRepository(root)
    repository.load("mlp")
    return repository


def model_state(server):
    """(index says READY, /ready says ready, an infer answers 200): all three agree when consistent."""
    status, _, raw = server.request("POST", "/v2/repository/index", b"")
    assert status == 200, raw
    index_ready = any(s["name"] == "mlp" and s["state"] == "READY" for s in msgspec.json.decode(raw))
    ready = server.request("GET", "/v2/models/mlp/ready")[0] == 200
    status, _, raw = server.request("POST", "/v2/models/mlp/infer", infer_body())
    assert status in (200, 404), (status, raw)  # never 503 "unloading" once nothing is changing
    return index_ready, ready, status == 200


def test_concurrent_load_unload_never_leaves_a_ready_model_that_refuses(serve, mlp_repository):
    """The race of issue 12 point 2: prepare reused the serving version, an unload closed it, then
    install put the closed version back: READY, yet every infer answered 503 'unloading'."""
    server = serve(LoopserveApp(mlp_repository))
    rng = random.Random(12)
    errors = []

    def step(action):
        if action == "infer":
            status, _, raw = server.request("POST", "/v2/models/mlp/infer", infer_body())
            ok = status in (200, 404, 503)  # 503: unloaded while in flight, fine mid-change
        else:
            status, _, raw = server.request("POST", f"/v2/repository/models/mlp/{action}")
            ok = status == 200 or (action == "unload" and status == 404)
        if not ok:
            errors.append((action, status, raw))

    for round_ in range(6):
        actions = [rng.choice(["load", "unload", "infer"]) for _ in range(24)]
        threads = [threading.Thread(target=step, args=(a,)) for a in actions]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        # Quiescent: what the server says must be what it does.
        index_ready, ready, serves = model_state(server)
        assert index_ready == ready == serves, (round_, index_ready, ready, serves)
        if not serves:  # and a load always makes it servable again
            assert server.request("POST", "/v2/repository/models/mlp/load")[0] == 200
            assert model_state(server) == (True, True, True)
