"""Serving from the registry: `registry://NAME@ALIAS` follows the alias; a canary alias splits
traffic; every artifact is verified; no request fails across the swaps."""

import time

import msgspec
import numpy as np
import pytest
import torch

from loopserve import zoo
from loopserve.loadgen import ClientLoops
from loopserve.registry import register_model, set_alias
from loopserve.server.config import ServerConfig
from loopserve.server.main import build_app
from loopserve.serving.registry_source import ModelSource
from loopserve.store import Store


def register(store_root, tmp_path, seed, alias=None):
    module = zoo.tiny_mlp(seed=seed)
    model_dir = zoo.write_model_dir(tmp_path / f"build-{seed}", "fraud", module)
    with Store(store_root) as store:
        v = register_model("fraud", [model_dir / "config.yaml", model_dir / "1" / "model.onnx"], alias=alias,
                           store=store)
        return v.version, module


def body():
    return msgspec.json.encode({"inputs": [{"name": zoo.INPUT, "shape": [1, 32], "datatype": "FP32",
                                            "data": [0.1] * 32}]})


def wait_for(predicate, timeout=60.0):  # generous: the registry poll is 0.05 s, loading is what takes time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_the_server_follows_registry_aliases_with_zero_failed_requests(serve, tmp_path):
    store_root = tmp_path / "store"
    v1, m1 = register(store_root, tmp_path, seed=1, alias="production")
    config = ServerConfig(models=[ModelSource(name="fraud", source="registry://fraud@production",
                                              canary_alias="canary", canary_weight=20)],
                          store=str(store_root), repository_poll_s=0.05)
    server = serve(build_app(config))

    status, _, raw = server.request("POST", "/v2/models/fraud/infer", body())
    assert status == 200 and msgspec.json.decode(raw)["model_version"] == str(v1)

    versions = set()

    def check(_client, raw, _latency):
        versions.add(msgspec.json.decode(raw)["model_version"])

    with ClientLoops(server.base_url, "/v2/models/fraud/infer", body(), clients=3, on_answer=check) as loops:
        v2, m2 = register(store_root, tmp_path, seed=2)
        with Store(store_root) as store:
            set_alias("fraud", "canary", v2, store=store)

        def weights():
            _, _, raw = server.request("GET", "/v2/models/fraud/traffic")
            return msgspec.json.decode(raw)["weights"]

        assert wait_for(lambda: weights() == {str(v1): 0.8, str(v2): 0.2})
        assert wait_for(lambda: {str(v1), str(v2)} <= versions)
        with Store(store_root) as store:
            set_alias("fraud", "production", v2, store=store)  # promoted: canary == production
        assert wait_for(lambda: weights() == {str(v2): 1.0})
    loops.tally.assert_zero_loss()
    status, _, raw = server.request("POST", "/v2/models/fraud/infer", body())
    reply = msgspec.json.decode(raw)
    want = m2(torch.full((1, 32), 0.1)).detach().numpy().ravel()
    assert reply["model_version"] == str(v2)
    np.testing.assert_allclose(reply["outputs"][0]["data"], want, rtol=1e-5, atol=1e-6)


def test_a_tampered_artifact_is_refused_and_what_serves_keeps_serving(serve, tmp_path):
    store_root = tmp_path / "store"
    v1, _ = register(store_root, tmp_path, seed=1, alias="production")
    config = ServerConfig(models=[ModelSource(name="fraud", source="registry://fraud@production")],
                          store=str(store_root), repository_poll_s=0.05)
    server = serve(build_app(config))
    v2, _ = register(store_root, tmp_path, seed=3)
    with Store(store_root) as store:
        from loopserve.registry import get_version

        blob = next(a for a in get_version("fraud", v2, store=store).artifacts if a.path == "model.onnx")
        path = store.blobs.path(blob.sha256)
        path.chmod(0o644)
        path.write_bytes(path.read_bytes()[:-10])
        set_alias("fraud", "production", v2, store=store)

    def index():
        _, _, raw = server.request("POST", "/v2/repository/index", b"{}")
        return msgspec.json.decode(raw)

    assert wait_for(lambda: any("modified or truncated" in e.get("reason", "") for e in index()))
    status, _, raw = server.request("POST", "/v2/models/fraud/infer", body())
    assert status == 200 and msgspec.json.decode(raw)["model_version"] == str(v1)


def test_a_bad_registry_source_stops_start_up(tmp_path):
    with pytest.raises(Exception, match="expected 'registry://NAME@ALIAS'"):
        build_app(ServerConfig(models=[ModelSource(name="x", source="s3://bucket/model")], store=str(tmp_path)))
    with pytest.raises(Exception, match="fraud"):
        build_app(ServerConfig(models=[ModelSource(name="x", source="registry://fraud@production")],
                               store=str(tmp_path)))
