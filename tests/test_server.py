"""The HTTP server against the real tritonclient: every route, JSON and binary tensors."""

import shutil
import threading

import msgspec
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from loopserve import DynamicBatching, Model, ModelConfig, TensorConfig
from loopserve.server.app import LoopserveApp
from loopserve.serving.repository import ModelRepository


NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]
NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
         "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
         "FP32": np.float32, "FP64": np.float64}


def identity_model(datatype: str) -> Model:
    config = ModelConfig(name=f"identity_{datatype.lower()}", max_batch_size=8,
                         inputs=[TensorConfig("x", datatype, [3])], outputs=[TensorConfig("y", datatype, [3])],
                         dynamic_batching=DynamicBatching(max_queue_delay_us=100))
    return Model.from_callable(lambda inputs: {"y": inputs["x"]}, config)


@pytest.fixture
def app(model_repo, tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(model_repo / "mlp_onnx", repo / "mlp")
    repository = ModelRepository(repo)
    repository.load("mlp")
    for dt in NUMERIC + ["BYTES"]:
        repository.add(identity_model(dt))
    return LoopserveApp(repository, max_body_bytes=1 << 20)


@pytest.fixture
def server(serve, app):
    return serve(app)


@pytest.fixture
def client(server):
    c = httpclient.InferenceServerClient(server.url)
    yield c
    c.close()


def test_health_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "loopserve"
    assert {"binary_tensor_data", "model_repository", "statistics"} <= set(meta["extensions"])


def test_model_metadata_config_and_readiness(client):
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("mlp", "7") and not client.is_model_ready("nope")
    meta = client.get_model_metadata("mlp")
    assert meta["name"] == "mlp" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 32]}]
    assert meta["outputs"] == [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 2]}]
    assert client.get_model_metadata("mlp", "1") == meta
    config = client.get_model_config("mlp")
    assert config["max_batch_size"] == 64 and config["backend"] == "onnxruntime"
    assert config["input"] == [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [32]}]
    assert config["output"] == [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [2]}]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 500
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_metadata("nope")


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
def test_infer_the_tiny_mlp(client, tiny_reference, binary_in, binary_out):
    x = np.random.rand(3, 32).astype(np.float32)
    inp = httpclient.InferInput("INPUT0", [3, 32], "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary_out)
    result = client.infer("mlp", [inp], outputs=[out], request_id="req-7")
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), tiny_reference(x), rtol=1e-5, atol=1e-6)
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_name"] == "mlp" and response["model_version"] == "1"


@pytest.mark.parametrize("datatype", NUMERIC + ["BYTES"])
@pytest.mark.parametrize("binary", [True, False])
def test_every_datatype_round_trips(client, datatype, binary):
    rng = np.random.default_rng(0)
    if datatype == "BYTES":
        x = np.array([[b"caf\xc3\xa9", b"", b"a b"], [b"\xe2\x82\xac", b"zz", b"x"]], dtype=object)
    elif datatype == "BOOL":
        x = rng.random((2, 3)) > 0.5
    elif datatype.startswith("FP"):
        x = rng.standard_normal((2, 3)).astype(NUMPY[datatype])
    else:
        info = np.iinfo(NUMPY[datatype])
        x = np.array([[info.min, info.max, 0], [1, info.max - 1, info.min + 1]], NUMPY[datatype])
    inp = httpclient.InferInput("x", [2, 3], datatype)
    inp.set_data_from_numpy(x, binary_data=binary)
    result = client.infer(f"identity_{datatype.lower()}", [inp],
                          outputs=[httpclient.InferRequestedOutput("y", binary_data=binary)])
    y = result.as_numpy("y")
    assert y.dtype == x.dtype and y.shape == x.shape
    if datatype == "BYTES" and not binary:  # JSON carries strings; tritonclient hands them back as str
        x = np.vectorize(bytes.decode, otypes=[object])(x)
    assert y.tolist() == x.tolist()


def test_infer_by_version_and_default_outputs(client, tiny_reference):
    x = np.ones((1, 32), np.float32)
    inp = httpclient.InferInput("INPUT0", [1, 32], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp", [inp], model_version="1")  # no outputs named: all of them
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), tiny_reference(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(InferenceServerException, match="has no version '3'"):
        client.infer("mlp", [inp], model_version="3")


def test_repository_index_load_and_unload(client):
    index = client.get_model_repository_index()  # tritonclient posts an empty body
    assert {"name": "mlp", "version": "1", "state": "READY", "reason": ""} in index
    client.unload_model("mlp")
    assert not client.is_model_ready("mlp")
    assert any(m["name"] == "mlp" and m["state"] == "UNAVAILABLE" for m in client.get_model_repository_index())
    client.load_model("mlp")
    assert client.is_model_ready("mlp")
    with pytest.raises(InferenceServerException, match="not in the repository"):
        client.load_model("ghost")


def test_statistics_extension(client):
    inp = httpclient.InferInput("INPUT0", [2, 32], "FP32")
    inp.set_data_from_numpy(np.ones((2, 32), np.float32))
    for _ in range(3):
        client.infer("mlp", [inp])
    stats = client.get_inference_statistics("mlp")["model_stats"]
    assert len(stats) == 1
    s = stats[0]
    assert s["name"] == "mlp" and s["version"] == "1" and s["inference_count"] == 6 and s["execution_count"] == 3
    inf = s["inference_stats"]
    assert inf["success"]["count"] == 3 and inf["queue"]["count"] == 3
    assert inf["compute_input"]["count"] == inf["compute_infer"]["count"] == inf["compute_output"]["count"] == 3
    assert inf["compute_infer"]["ns"] > 0 and s["last_inference"] > 0
    assert s["batch_stats"][0]["batch_size"] == 2 and s["batch_stats"][0]["compute_infer"]["count"] == 3
    everything = client.get_inference_statistics()["model_stats"]
    assert {m["name"] for m in everything} >= {"mlp", "identity_fp32"}


def test_concurrent_infer_from_many_threads(server, tiny_reference):
    errors = []

    def worker(seed):
        c = httpclient.InferenceServerClient(server.url)  # one client per thread: it is not thread-safe
        rng = np.random.default_rng(seed)
        try:
            for i in range(40):
                rows = int(rng.integers(1, 5))
                x = rng.random((rows, 32), dtype=np.float32)
                inp = httpclient.InferInput("INPUT0", [rows, 32], "FP32")
                inp.set_data_from_numpy(x, binary_data=bool(i % 2))
                y = c.infer("mlp", [inp]).as_numpy("OUTPUT0")
                if not np.allclose(y, tiny_reference(x), rtol=1e-5, atol=1e-6):
                    errors.append((seed, i))
        except Exception as e:  # surfaced by the assertion below
            errors.append(repr(e))
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_metrics_use_tritons_names(client, server):
    inp = httpclient.InferInput("INPUT0", [1, 32], "FP32")
    inp.set_data_from_numpy(np.ones((1, 32), np.float32))
    client.infer("mlp", [inp])
    status, headers, body = server.request("GET", "/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    for name in ["nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                 "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
                 "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
                 "nv_inference_compute_output_duration_us", "loopserve_request_duration_seconds_bucket",
                 "loopserve_batch_size_bucket", "loopserve_queue_depth"]:
        assert name in text, name
    assert 'nv_inference_request_success_total{model="mlp",version="1"} 1.0' in text
    assert 'loopserve_request_duration_seconds_count{model="mlp",version="1"} 1.0' in text


def test_raw_binary_request_for_a_single_input_model(server, tiny_reference):
    x = np.random.rand(2, 32).astype(np.float32)
    status, _, body = server.request("POST", "/v2/models/mlp/infer", x.tobytes(),
                                     {"Inference-Header-Content-Length": "0"})
    assert status == 200, body
    out = msgspec.json.decode(body)["outputs"][0]
    assert out["shape"] == [2, 2]
    np.testing.assert_allclose(np.array(out["data"], np.float32).reshape(2, 2), tiny_reference(x), rtol=1e-5,
                               atol=1e-6)
