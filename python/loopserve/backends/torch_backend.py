"""torch models: a torch.export program (.pt2), a TorchScript file (.pt), or an nn.Module."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from loopserve.backends.base import NUMPY_DTYPES, Backend
from loopserve.config import ModelConfig
from loopserve.errors import ConfigError
from loopserve.thread_budget import budget_for


class TorchBackend(Backend):
    """Calls ``module(*inputs)`` in declared input order under inference_mode.

    The module may return a tensor (one output), a tuple/list in declared output order, or
    a dict by output name. On a GPU the batcher gathers each batch straight into pinned host
    buffers owned here, so each input crosses to the device in one asynchronous copy.
    """

    kind = "pytorch"
    platform = "pytorch_libtorch"  # as Triton names it in model metadata

    def __init__(self, config: ModelConfig, module, source: str):
        super().__init__(config)
        self.require_declared(source)
        self.device = torch.device(config.device)
        if config.thread_spinning is not None:
            raise ConfigError(f"{source}: thread_spinning applies to onnxruntime only; torch's threads spin as "
                              "OMP_WAIT_POLICY in the environment says")
        self.thread_budget = budget_for(config)
        if self.thread_budget.intra_op:  # process-wide: how torch models share it is in thread_budget
            torch.set_num_threads(self.thread_budget.intra_op)
        if isinstance(module, torch.nn.Module):
            module = module.to(self.device)
            if not isinstance(module, torch.fx.GraphModule):  # torch.export programs refuse eval()
                module.eval()
        self.module = module
        self._input_names = [t.name for t in self.inputs]
        self._output_names = [t.name for t in self.outputs]
        self._pinned: dict[int, torch.Tensor] = {}
        self._staging: list[list[tuple[int, int]]] = []
        if self.device.type == "cuda":
            self._allocate_pinned()

    @classmethod
    def from_file(cls, config: ModelConfig, model_file: Path) -> "TorchBackend":
        try:
            if model_file.suffix == ".pt2":
                module = torch.export.load(str(model_file)).module()
            else:
                with warnings.catch_warnings():  # TorchScript is legacy; serving it is the user's call
                    warnings.simplefilter("ignore", DeprecationWarning)
                    module = torch.jit.load(str(model_file), map_location=config.device)
        except Exception as e:
            raise ConfigError(f"{model_file}: torch cannot load it: {e}") from None
        return cls(config, module, str(model_file))

    def _allocate_pinned(self) -> None:
        rows = max(self.config.max_batch_size, 1)
        for _ in range(self.config.instances):
            per_input = []
            for t in self.inputs:
                if t.datatype == "BYTES" or any(d < 0 for d in t.dims):
                    per_input.append((0, 0))  # variable size: the batcher's own buffer
                    continue
                nbytes = rows * int(np.prod(t.dims, dtype=np.int64)) * NUMPY_DTYPES[t.datatype].itemsize
                buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
                self._pinned[buf.data_ptr()] = buf
                per_input.append((buf.data_ptr(), nbytes))
            self._staging.append(per_input)

    def staging(self) -> list[list[tuple[int, int]]]:
        return self._staging

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        pinned = self._pinned.get(array.__array_interface__["data"][0]) if self._pinned else None
        if pinned is not None:
            t = pinned[: array.nbytes].view(torch.from_numpy(array[:0]).dtype).view(array.shape)
            return t.to(self.device, non_blocking=True)
        t = torch.from_numpy(array)
        return t if self.device.type == "cpu" else t.to(self.device)

    def __call__(self, inputs):
        with torch.inference_mode():
            result = self.module(*(self._to_device(inputs[n]) for n in self._input_names))
        if isinstance(result, torch.Tensor):
            result = (result,)
        if isinstance(result, dict):
            return {k: _numpy(v) for k, v in result.items()}
        return {n: _numpy(v) for n, v in zip(self._output_names, result)}


def _numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)
