"""Plain Python models: any callable, or a model.py file.

A model.py defines either a class ``Model`` (constructed with the ModelConfig, then called
once per batch) or a function ``infer(inputs)``. Both take {name: array} and return
{name: array} (or a sequence in declared output order).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

from loopserve.backends.base import Backend
from loopserve.config import ModelConfig
from loopserve.errors import ConfigError


class PythonBackend(Backend):
    kind = "python"
    platform = ""  # as Triton names it in model metadata
    def __init__(self, config: ModelConfig, fn: Callable, source: str):
        super().__init__(config)
        self.require_declared(source)
        self.fn = fn

    @classmethod
    def from_file(cls, config: ModelConfig, model_file: Path) -> "PythonBackend":
        spec = importlib.util.spec_from_file_location(f"loopserve_model_{abs(hash(str(model_file)))}", model_file)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise ConfigError(f"{model_file}: importing it failed: {type(e).__name__}: {e}") from None
        if hasattr(module, "Model"):
            try:
                fn = module.Model(config)
            except Exception as e:
                raise ConfigError(f"{model_file}: Model(config) failed: {type(e).__name__}: {e}") from None
        elif hasattr(module, "infer"):
            fn = module.infer
        else:
            raise ConfigError(f"{model_file}: defines neither a class `Model` nor a function `infer`")
        return cls(config, fn, str(model_file))

    def __call__(self, inputs):
        return self.fn(inputs)
