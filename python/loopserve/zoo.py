"""Reference models for the demo, the benchmarks and the tests, and the helpers that write
them out as a loopserve model directory.

The tiny MLP (32 -> 64 -> 2, torch seed 0) has exactly the weights of the model NVIDIA
Triton serves in our side-by-side benchmarks (shared/anchors/triton/model_repository/mlp).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch

INPUT, OUTPUT = "INPUT0", "OUTPUT0"


def tiny_mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2)).eval()


def heavy_mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(512, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 2048), torch.nn.ReLU(),
        torch.nn.Linear(2048, 2),
    ).eval()


def _example(module: torch.nn.Module) -> torch.Tensor:
    return torch.zeros(2, module[0].in_features)


def export_onnx(module: torch.nn.Module, path: str | Path) -> Path:
    """One-file ONNX with a dynamic batch dimension (torch's dynamo exporter)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)  # the exporter logs each op set it skips
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (_example(module),), str(path), input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_shapes=({0: batch},), external_data=False, verbose=False)
        finally:
            onnx_log.setLevel(level)
    return path


def export_pt2(module: torch.nn.Module, path: str | Path) -> Path:
    """A torch.export program with a dynamic batch dimension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    program = torch.export.export(module, (_example(module),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def export_torchscript(module: torch.nn.Module, path: str | Path) -> Path:
    """TorchScript, for older deployments (legacy in torch 2.x; prefer .pt2)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(module, _example(module)), str(path))
    return path


def write_model_dir(root: str | Path, name: str, module: torch.nn.Module, *, fmt: str = "onnx", version: int = 1,
                    max_batch_size: int = 64, max_queue_delay_us: int = 500, extra_config: str = "") -> Path:
    """Writes `<root>/<name>/config.yaml` and `<root>/<name>/<version>/model.<ext>`."""
    model_dir = Path(root) / name
    version_dir = model_dir / str(version)
    if fmt == "onnx":
        export_onnx(module, version_dir / "model.onnx")
    elif fmt == "pt2":
        export_pt2(module, version_dir / "model.pt2")
    elif fmt == "torchscript":
        export_torchscript(module, version_dir / "model.pt")
    else:
        raise ValueError(f"unknown format {fmt!r}; expected onnx, pt2 or torchscript")
    n_in, n_out = module[0].in_features, module[-1].out_features
    (model_dir / "config.yaml").write_text(
        f"name: {name}\n"
        f"max_batch_size: {max_batch_size}\n"
        f"inputs:\n  - {{name: {INPUT}, datatype: FP32, dims: [{n_in}]}}\n"
        f"outputs:\n  - {{name: {OUTPUT}, datatype: FP32, dims: [{n_out}]}}\n"
        f"dynamic_batching:\n  max_queue_delay_us: {max_queue_delay_us}\n" + extra_config
    )
    return model_dir
