"""Backends: how a model file (or object) becomes the callable the native batcher runs.

A backend is called once per batch, with the GIL held, as ``backend(inputs)`` where
``inputs`` maps input names to numpy arrays (batch dimension first) that are valid only
during the call. It returns a dict of output name to array. torch and onnxruntime release
the GIL while they compute, so several instances run batches truly in parallel.
"""

from __future__ import annotations

from pathlib import Path

from loopserve.backends.base import Backend
from loopserve.config import ModelConfig
from loopserve.errors import ConfigError

# Model file names in a version directory, and the backend each implies.
MODEL_FILES = {
    "model.onnx": "onnxruntime",
    "model.pt2": "torch",
    "model.pt": "torch",
    "model.py": "python",
}


def find_model_file(version_dir: Path) -> Path:
    for name in MODEL_FILES:
        if (version_dir / name).is_file():
            return version_dir / name
    raise ConfigError(f"{version_dir}: no model file; expected one of {', '.join(MODEL_FILES)}")


def open_backend(config: ModelConfig, model_file: Path) -> Backend:
    """Loads the model file with the backend its name (or the config) asks for."""
    backend = config.backend or MODEL_FILES.get(model_file.name)
    implied = MODEL_FILES.get(model_file.name)
    if implied is not None and backend != implied:
        raise ConfigError(f"{model_file}: config says backend {backend!r}, but the file is a {implied} model")
    if backend == "onnxruntime":
        from loopserve.backends.onnx_backend import OnnxBackend

        return OnnxBackend(config, model_file)
    if backend == "torch":
        from loopserve.backends.torch_backend import TorchBackend

        return TorchBackend.from_file(config, model_file)
    if backend == "python":
        from loopserve.backends.python_backend import PythonBackend

        return PythonBackend.from_file(config, model_file)
    raise ConfigError(f"{model_file}: cannot tell the backend; name the file model.onnx, model.pt2, model.pt "
                      "or model.py, or set `backend` in the config")


__all__ = ["Backend", "MODEL_FILES", "find_model_file", "open_backend"]
