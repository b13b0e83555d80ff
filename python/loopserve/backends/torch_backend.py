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
    takes_instance = True  # on a GPU each instance runs on its own stream (cuda_lane.py)

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
        self.drift_observer = None  # the drift monitor's kernel path: shown each batch's device tensors
        self._lanes = []
        if self.device.type == "cuda":
            self._allocate_pinned()
            self._lanes = self._make_lanes()
        elif config.cuda_graphs:
            raise ConfigError(f"{source}: cuda_graphs needs a CUDA device; this model runs on {config.device}")

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

    def _make_lanes(self) -> list:
        """One CUDA stream per instance, with its pinned output buffers (and CUDA graphs)."""
        from loopserve.backends.cuda_lane import CudaLane

        lanes = [CudaLane(self.device) for _ in range(self.config.instances)]
        if self.config.cuda_graphs:
            sizes = sorted(set(self.config.dynamic_batching.preferred_batch_sizes or [self.config.max_batch_size]))
            with torch.inference_mode():
                for lane in lanes:
                    lane.capture(self.module, self.inputs, sizes)
        return lanes

    def __call__(self, inputs, instance: int = -1):
        with torch.inference_mode():
            if 0 <= instance < len(self._lanes):
                return self._lanes[instance].run(self, inputs)
            tensors = [self._to_device(inputs[n]) for n in self._input_names]
            outputs = self.named_outputs(self.module(*tensors))
            if self.drift_observer is not None:
                self.drift_observer.observe_batch(tensors, [outputs.get(n) for n in self._output_names])
        return {k: _numpy(v) for k, v in outputs.items()}

    def named_outputs(self, result) -> dict:
        """The module's result (a tensor, a sequence in declared order, or a dict) by output name."""
        if isinstance(result, torch.Tensor):
            result = (result,)
        if isinstance(result, dict):
            return dict(result)
        return dict(zip(self._output_names, result))


def _numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)
