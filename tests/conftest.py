import os

# Triton kernels run on the CPU in tests; the variable is read when @triton.jit runs.
os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest

from loopserve import DynamicBatching, ModelConfig, TensorConfig, zoo


def vector_config(name="m", width=4, max_batch_size=32, datatype="FP32", out_width=None, instances=1,
                  **batching) -> ModelConfig:
    """A model taking x[width] and returning y[out_width] per row."""
    return ModelConfig(
        name=name,
        max_batch_size=max_batch_size,
        inputs=[TensorConfig("x", datatype, [width])],
        outputs=[TensorConfig("y", datatype, [out_width or width])],
        dynamic_batching=DynamicBatching(**batching),
        instances=instances,
    )


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory):
    """The tiny MLP as ONNX, torch.export and TorchScript model directories."""
    root = tmp_path_factory.mktemp("repo")
    module = zoo.tiny_mlp()
    zoo.write_model_dir(root, "mlp_onnx", module, fmt="onnx")
    zoo.write_model_dir(root, "mlp_pt2", module, fmt="pt2")
    zoo.write_model_dir(root, "mlp_ts", module, fmt="torchscript")
    return root


@pytest.fixture(scope="session")
def tiny_reference():
    """f(x) of the tiny MLP, computed directly with torch."""
    import torch

    module = zoo.tiny_mlp()

    def f(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return f
