"""Exporting a trained model (ONNX, TorchScript), checking the exports against the eager model, and
writing the model directory loopserve serves.

    <dir>/<name>/config.yaml                 inputs, outputs, dynamic batching (shared by versions)
    <dir>/<name>/<version>/model.onnx        what the server runs (the first model file it looks for)
    <dir>/<name>/<version>/model.pt          TorchScript, for deployments that want it
    <dir>/<name>/<version>/drift_profile.json, signature.json, train_result.json, gates.json

A version directory is assembled under a hidden name and renamed into place, so a server
polling the repository never sees a half-written version.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import time
import warnings
from pathlib import Path

import msgspec
import numpy as np
import torch

from loopserve.errors import ConfigError, LoopserveError

SIGNATURE_FILE = "signature.json"


class ExportMismatch(LoopserveError):
    """An exported model does not compute what the eager model computes."""


class Signature(msgspec.Struct, frozen=True):
    """What the model's input columns are and how to read its output (written beside the model)."""

    input: str
    output: str
    feature_names: list[str]
    categorical: dict[str, int]
    decision_threshold: float
    label: str
    group: str | None


def export_onnx(module: torch.nn.Module, path: Path, n_features: int, input_name: str, output_name: str) -> Path:
    """One-file ONNX with a dynamic batch dimension (torch's dynamo exporter)."""
    example = torch.zeros(2, n_features)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)  # the exporter logs each op set it skips
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=[output_name],
                              dynamic_shapes=({0: batch},), external_data=False, verbose=False)
    finally:
        onnx_log.setLevel(level)
    return path


def export_torchscript(module: torch.nn.Module, path: Path, n_features: int) -> Path:
    """A traced TorchScript file (legacy in torch 2.x, still what many deployments load)."""
    example = torch.rand(4, n_features)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example, check_trace=False)
        torch.jit.save(traced, str(path))
    return path


def onnx_predict(path: Path, features: np.ndarray, input_name: str) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {input_name: np.ascontiguousarray(features, dtype=np.float32)})[0].reshape(-1)


def torchscript_predict(path: Path, features: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return module(torch.from_numpy(np.ascontiguousarray(features))).reshape(-1).numpy()


def check_agreement(what: str, eager: np.ndarray, exported: np.ndarray, tolerance: float) -> float:
    """max |eager - exported|; ExportMismatch when it is over `tolerance` (or shapes differ)."""
    if eager.shape != exported.shape:
        raise ExportMismatch(f"{what} returns shape {exported.shape}, the eager model {eager.shape}")
    diff = np.abs(eager.astype(np.float64) - exported.astype(np.float64))
    worst = int(np.argmax(diff)) if diff.size else 0
    value = float(diff[worst]) if diff.size else 0.0
    if not value <= tolerance:  # NaN fails too
        raise ExportMismatch(f"{what} disagrees with the eager model: max |difference| {value:.3g} > tolerance "
                             f"{tolerance:g} on {len(eager):,} held-out rows (worst row {worst}: eager "
                             f"{eager[worst]:.7g}, {what} {exported[worst]:.7g})")
    return value


def next_version(model_dir: Path) -> int:
    from loopserve.serving.model import available_versions

    return (available_versions(model_dir)[-1] + 1) if model_dir.is_dir() and available_versions(model_dir) else 1


def model_config_text(name: str, input_name: str, n_features: int, output_name: str, max_batch_size: int,
                      max_queue_delay_us: int, instances: int) -> str:
    return (f"name: {name}\n"
            f"max_batch_size: {max_batch_size}\n"
            f"inputs:\n  - {{name: {input_name}, datatype: FP32, dims: [{n_features}]}}\n"
            f"outputs:\n  - {{name: {output_name}, datatype: FP32, dims: [1]}}\n"
            f"dynamic_batching:\n  max_queue_delay_us: {max_queue_delay_us}\n"
            f"instances: {instances}\n"
            f"warmup_rows: [1]\n")


def ensure_model_config(model_dir: Path, text: str, input_name: str, n_features: int, output_name: str) -> Path:
    """Write `config.yaml` if the model has none; an existing one (it may carry traffic settings) is
    kept, but must declare the same input and output as this version."""
    from loopserve.config import load_config
    from loopserve.serving.model import CONFIG_NAMES

    existing = next((model_dir / n for n in CONFIG_NAMES if (model_dir / n).is_file()), None)
    if existing is None:
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = model_dir / ".config.yaml.tmp"
        tmp.write_text(text)
        os.replace(tmp, model_dir / "config.yaml")
        return model_dir / "config.yaml"
    config = load_config(existing)
    want = {input_name: [n_features]}
    have = {t.name: list(t.dims) for t in config.inputs}
    if config.inputs and have != want:
        raise ConfigError(f"{existing}: declares inputs {have}, but this model takes {want}; train into a new "
                          f"model name (output.name) or update the config")
    outs = {t.name: list(t.dims) for t in config.outputs}
    if config.outputs and outs != {output_name: [1]}:
        raise ConfigError(f"{existing}: declares outputs {outs}, but this model returns {{{output_name!r}: [1]}}")
    return existing


class VersionDir:
    """A version being assembled in a hidden staging model directory (`.path`: its own config.yaml and
    `<version>/`, so it can be loaded and gated as served); `commit` renames the version into the
    repository, `reject` moves it to `<model dir>/rejected/`, where the server never looks."""

    def __init__(self, model_dir: Path, version: int):
        self.model_dir = model_dir
        self.version = version
        self.final = model_dir / str(version)
        if self.final.exists():
            raise ConfigError(f"output.version: {self.final} already exists; versions are immutable (use "
                              f"version: next, or another number)")
        self.path = model_dir / f".staging-v{version}-{os.getpid()}"
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True)

    def _move(self, vdir: Path, target: Path) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(vdir, target)
        except OSError as e:
            raise LoopserveError(f"cannot move the new version into {target}: {e}") from None
        self.abandon()
        return target

    def commit(self, vdir: Path) -> Path:
        return self._move(vdir, self.final)

    def reject(self, vdir: Path) -> Path:
        return self._move(vdir, self.model_dir / "rejected" / f"{self.version}-{time.strftime('%Y%m%dT%H%M%S')}")

    def abandon(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
