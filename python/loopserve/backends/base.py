"""What every backend provides to the batcher."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Mapping

import numpy as np

from loopserve.config import ModelConfig, TensorConfig
from loopserve.errors import ConfigError
from loopserve.thread_budget import ThreadBudget

NUMPY_DTYPES = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),  # numpy object arrays of bytes
}


class Backend(ABC):
    """A loaded model. Subclasses set `inputs`/`outputs` (declared or read from the model)
    and implement __call__."""

    kind: str  # the runtime: onnxruntime, pytorch, python
    # True: called as backend(inputs, instance), instance = the batch's instance (-1: the submitting thread)
    takes_instance: bool = False
    platform: str  # Triton's platform name, for model metadata
    inputs: list[TensorConfig]
    outputs: list[TensorConfig]
    thread_budget: ThreadBudget | None = None  # the runtime's threads (None: not a threaded runtime)

    def __init__(self, config: ModelConfig):
        self.config = config
        self.inputs = list(config.inputs)
        self.outputs = list(config.outputs)

    @abstractmethod
    def __call__(self, inputs: Mapping[str, np.ndarray]) -> Mapping[str, Any] | Any:
        """Runs one batch: {input name: array} -> {output name: array}."""

    def staging(self) -> list[list[tuple[int, int]]]:
        """Per instance, per input: (address, capacity) of host buffers the batcher should
        gather into (pinned memory for one copy to the GPU per batch); [] for its own."""
        return []

    def require_declared(self, source: str) -> None:
        if not self.inputs or not self.outputs:
            raise ConfigError(f"{source}: this backend cannot read its inputs and outputs from the model file; "
                              "declare `inputs` and `outputs` (name, datatype, dims) in the config")
