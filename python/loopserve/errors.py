"""The exceptions loopserve raises. All derive from LoopserveError.

Each carries the HTTP status it is answered with (`status`) and any extra response headers
(`headers`, ASGI-style byte pairs), so the server maps every refusal by looking them up; a
LoopserveError not classified below is a 500.

The first four are raised by the native core when it refuses a request at submit time;
nothing was queued then.
"""

from loopserve._core import InvalidInput, LoopserveError, QueueFull, Unavailable

RETRY_AFTER = ((b"retry-after", b"1"),)

# The core's classes are defined in C++; their statuses are set here.
LoopserveError.status = 500
LoopserveError.headers = ()
InvalidInput.status = 400
QueueFull.status = 429
QueueFull.headers = RETRY_AFTER
Unavailable.status = 503
Unavailable.headers = RETRY_AFTER


class TimedOut(LoopserveError):
    """The request waited in the queue past its timeout and was never run."""

    status = 504


class ModelError(LoopserveError):
    """The model itself failed on the batch that held the request (its own message)."""

    status = 500


class ConfigError(LoopserveError, ValueError):
    """A config file or model directory is wrong; the message names the file and the key."""

    status = 400


class ModelNotFound(LoopserveError, LookupError):
    """No such model or version."""

    status = 404


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
