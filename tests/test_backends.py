"""Real models on every backend, loaded from model directories and from Python objects."""

import asyncio
import shutil
import textwrap

import numpy as np
import pytest
import torch

from loopserve import ConfigError, Model, ModelConfig, ModelError, ModelNotFound, TensorConfig, zoo


@pytest.mark.parametrize("name", ["mlp_onnx", "mlp_pt2", "mlp_ts"])
def test_model_directory_serves_the_tiny_mlp(model_repo, tiny_reference, name):
    with Model.load(model_repo / name) as m:
        assert m.name == name and m.version == 1

        async def main():
            xs = [np.random.rand(r, 32).astype(np.float32) for r in (1, 3, 7, 1, 2)]
            outs = await asyncio.gather(*(m.infer({"INPUT0": x}) for x in xs))
            for x, out in zip(xs, outs):
                np.testing.assert_allclose(out["OUTPUT0"], tiny_reference(x), rtol=1e-5, atol=1e-6)

        asyncio.run(main())


def test_onnx_signature_is_read_from_the_model(model_repo, tmp_path):
    d = tmp_path / "bare"
    shutil.copytree(model_repo / "mlp_onnx" / "1", d / "1")
    (d / "config.yaml").write_text("max_batch_size: 16\n")
    with Model.load(d) as m:
        assert [(t.name, t.datatype, t.dims) for t in m.inputs] == [("INPUT0", "FP32", [32])]
        assert [(t.name, t.datatype, t.dims) for t in m.outputs] == [("OUTPUT0", "FP32", [2])]
        assert m.name == "bare"


def test_onnx_config_that_disagrees_with_the_model_fails_to_load(model_repo, tmp_path):
    d = tmp_path / "wrong"
    shutil.copytree(model_repo / "mlp_onnx" / "1", d / "1")
    (d / "config.yaml").write_text(
        "max_batch_size: 8\ninputs: [{name: INPUT0, datatype: FP64, dims: [32]}]\n"
        "outputs: [{name: OUTPUT0, datatype: FP32, dims: [2]}]\n")
    with pytest.raises(ConfigError, match=r"input 'INPUT0' is FP32 in the model, FP64 in the config"):
        Model.load(d)
    (d / "config.yaml").write_text(
        "max_batch_size: 8\ninputs: [{name: features, datatype: FP32, dims: [32]}]\n"
        "outputs: [{name: OUTPUT0, datatype: FP32, dims: [2]}]\n")
    with pytest.raises(ConfigError, match=r"declares input 'features', but the model has inputs \['INPUT0'\]"):
        Model.load(d)


def test_versions_latest_by_default_and_by_number(model_repo, tmp_path):
    d = tmp_path / "versions"
    shutil.copytree(model_repo / "mlp_onnx", d)
    zoo.export_onnx(zoo.tiny_mlp(seed=1), d / "2" / "model.onnx")
    x = np.ones((1, 32), np.float32)
    with Model.load(d) as latest, Model.load(d, version=1) as first:
        assert latest.version == 2 and first.version == 1
        assert not np.allclose(latest.infer_sync({"INPUT0": x})["OUTPUT0"], first.infer_sync({"INPUT0": x})["OUTPUT0"])
    with pytest.raises(ModelNotFound, match=r"has no version 5 \(available: \[1, 2\]\)"):
        Model.load(d, version=5)


def test_nn_module_handed_in_from_python(tiny_reference):
    config = ModelConfig(name="mod", max_batch_size=16, inputs=[TensorConfig("INPUT0", "FP32", [32])],
                         outputs=[TensorConfig("OUTPUT0", "FP32", [2])])
    with Model.from_module(zoo.tiny_mlp(), config) as m:
        x = np.random.rand(4, 32).astype(np.float32)
        np.testing.assert_allclose(m.infer_sync({"INPUT0": x})["OUTPUT0"], tiny_reference(x), rtol=1e-6)


def test_torch_module_with_several_inputs_and_dict_outputs():
    class TwoHeads(torch.nn.Module):
        def forward(self, a, b):
            return {"sum": a + b.float(), "argmax": torch.argmax(a, dim=1)}

    config = ModelConfig(
        name="heads", max_batch_size=8,
        inputs=[TensorConfig("a", "FP32", [3]), TensorConfig("b", "INT64", [3])],
        outputs=[TensorConfig("sum", "FP32", [3]), TensorConfig("argmax", "INT64", [])],
    )
    with Model.from_module(TwoHeads(), config) as m:
        a = np.array([[1, 5, 2], [9, 0, 0]], np.float32)
        b = np.array([[1, 1, 1], [2, 2, 2]], np.int64)
        out = m.infer_sync({"a": a, "b": b})
        np.testing.assert_array_equal(out["sum"], a + b)
        np.testing.assert_array_equal(out["argmax"], [1, 0])


def test_python_model_file_with_class_and_function(tmp_path):
    for body in (
        """
        class Model:
            def __init__(self, config):
                self.k = config.max_batch_size
            def __call__(self, inputs):
                return {"y": inputs["x"] + self.k}
        """,
        """
        def infer(inputs):
            return {"y": inputs["x"] + 4}
        """,
    ):
        d = tmp_path / "py"
        shutil.rmtree(d, ignore_errors=True)
        (d / "1").mkdir(parents=True)
        (d / "1" / "model.py").write_text(textwrap.dedent(body))
        (d / "config.toml").write_text(textwrap.dedent("""
            max_batch_size = 4
            inputs = [{name = "x", datatype = "INT32", dims = [2]}]
            outputs = [{name = "y", datatype = "INT32", dims = [2]}]
        """))
        with Model.load(d) as m:
            np.testing.assert_array_equal(m.infer_sync({"x": np.array([[1, 2]], np.int32)})["y"], [[5, 6]])


def test_python_model_file_that_fails_to_import(tmp_path):
    d = tmp_path / "broken"
    (d / "1").mkdir(parents=True)
    (d / "1" / "model.py").write_text("raise RuntimeError('no weights here')\n")
    (d / "config.yaml").write_text("inputs: [{name: x, datatype: FP32, dims: [1]}]\n"
                                   "outputs: [{name: y, datatype: FP32, dims: [1]}]\n")
    with pytest.raises(ConfigError, match=r"model.py: importing it failed: RuntimeError: no weights here"):
        Model.load(d)


def test_corrupt_model_files_fail_to_load_with_the_reason(tmp_path):
    for fname, message in (("model.onnx", "onnxruntime cannot load it"), ("model.pt2", "torch cannot load it"),
                           ("model.pt", "torch cannot load it")):
        d = tmp_path / fname.replace(".", "_")
        (d / "1").mkdir(parents=True)
        (d / "1" / fname).write_bytes(b"not a model at all")
        (d / "config.yaml").write_text("max_batch_size: 4\ninputs: [{name: x, datatype: FP32, dims: [1]}]\n"
                                       "outputs: [{name: y, datatype: FP32, dims: [1]}]\n")
        with pytest.raises(ConfigError, match=message):
            Model.load(d)


def test_torch_model_error_carries_the_models_own_message():
    class Picky(torch.nn.Module):
        def forward(self, x):
            if x.shape[0] > 2:
                raise ValueError("Picky takes at most 2 rows")
            return x

    config = ModelConfig(name="picky", max_batch_size=8, inputs=[TensorConfig("x", "FP32", [2])],
                         outputs=[TensorConfig("y", "FP32", [2])])
    with Model.from_module(Picky(), config) as m:
        with pytest.raises(ModelError, match="Picky takes at most 2 rows"):
            m.infer_sync({"x": np.ones((3, 2), np.float32)})
        np.testing.assert_array_equal(m.infer_sync({"x": np.ones((2, 2), np.float32)})["y"], 1)


def test_onnx_instances_run_in_parallel(model_repo, tmp_path, tiny_reference):
    d = tmp_path / "inst"
    shutil.copytree(model_repo / "mlp_onnx", d)
    (d / "config.yaml").write_text((d / "config.yaml").read_text() + "instances: 3\nthreads: 1\n")
    with Model.load(d) as m:

        async def main():
            xs = [np.random.rand(1, 32).astype(np.float32) for _ in range(300)]
            outs = await asyncio.gather(*(m.infer({"INPUT0": x}) for x in xs))
            for x, out in zip(xs, outs):
                np.testing.assert_allclose(out["OUTPUT0"], tiny_reference(x), rtol=1e-5, atol=1e-6)

        asyncio.run(main())
        assert m.stats().success == 300


def test_staging_buffers_receive_the_gathered_batch():
    """The hook a GPU backend uses to gather into pinned memory, checked with host buffers."""
    from loopserve import _core

    staging = np.zeros(64 * 4, np.float32)
    seen = []

    def fn(inputs):
        x = inputs["x"]
        seen.append(x.__array_interface__["data"][0] == staging.__array_interface__["data"][0])
        return {"y": x * 2}

    spec = [_core.TensorSpec("x", "FP32", [4])]
    config = _core.BatcherConfig()
    config.model_name, config.inputs, config.max_batch_size = "staged", spec, 64
    config.outputs = [_core.TensorSpec("y", "FP32", [4])]
    executor = _core.PyExecutor(fn, spec, config.outputs, [[(staging.__array_interface__["data"][0], staging.nbytes)]])
    batcher = _core.Batcher(config, executor)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    _token, status, (y,) = batcher.infer_sync({"x": x})
    batcher.stop()
    assert status == _core.STATUS_OK and seen == [True]
    np.testing.assert_array_equal(y, x * 2)
    np.testing.assert_array_equal(staging[:8], x.ravel())


def test_a_single_version_directory_loads_as_the_registry_materializes_it(tmp_path):
    model_dir = zoo.write_model_dir(tmp_path / "repo", "m", zoo.tiny_mlp())
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(model_dir / "config.yaml", flat / "config.yaml")
    shutil.copy(model_dir / "1" / "model.onnx", flat / "model.onnx")
    with Model.load(flat, 7) as model:
        assert model.version == 7
        out = model.infer_sync({zoo.INPUT: np.zeros((2, 32), np.float32)})
        assert out[zoo.OUTPUT].shape == (2, 2)


def test_cuda_graphs_on_a_cpu_model_are_refused_clearly():
    import msgspec

    from conftest import vector_config

    config = msgspec.structs.replace(vector_config(width=32, out_width=2), cuda_graphs=True)
    with pytest.raises(ConfigError, match="cuda_graphs needs a CUDA device"):
        Model.from_module(zoo.tiny_mlp(), config)
