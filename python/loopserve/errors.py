"""The exceptions loopserve raises. All derive from LoopserveError.

The first four are raised by the native core when it refuses a request at submit time;
nothing was queued then.
"""

from loopserve._core import InvalidInput, LoopserveError, QueueFull, Unavailable


class TimedOut(LoopserveError):
    """The request waited in the queue past its timeout and was never run."""


class ModelError(LoopserveError):
    """The model itself failed on the batch that held the request (its own message)."""


class ConfigError(LoopserveError, ValueError):
    """A config file or model directory is wrong; the message names the file and the key."""


class ModelNotFound(LoopserveError, LookupError):
    """No such model or version."""


__all__ = [
    "LoopserveError",
    "InvalidInput",
    "QueueFull",
    "Unavailable",
    "TimedOut",
    "ModelError",
    "ConfigError",
    "ModelNotFound",
]
