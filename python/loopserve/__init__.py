"""loopserve: a closed-loop model server."""

from loopserve.config import DynamicBatching, ModelConfig, TensorConfig, load_config
from loopserve.errors import (
    ConfigError,
    InvalidInput,
    LoopserveError,
    ModelError,
    ModelNotFound,
    QueueFull,
    TimedOut,
    Unavailable,
)
from loopserve.serving.model import Model, ModelStats

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DynamicBatching",
    "InvalidInput",
    "LoopserveError",
    "Model",
    "ModelConfig",
    "ModelError",
    "ModelNotFound",
    "ModelStats",
    "QueueFull",
    "TensorConfig",
    "TimedOut",
    "Unavailable",
    "load_config",
]
