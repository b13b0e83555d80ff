"""The exceptions loopserve raises. All derive from LoopserveError.

Each carries the HTTP status it is answered with (`status`) and any extra response headers
(`headers`, ASGI-style byte pairs), so the server maps every refusal by looking them up; a
LoopserveError not classified below is a 500.

The first four are raised by the native core when it refuses a request at submit time;
nothing was queued then.
"""

import logging

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


_model_log = logging.getLogger("loopserve.model")
_hide_in_model_failures = str


def hide_in_model_failures(hide) -> None:
    """`hide(text)`: a model failure's text as a client may read it (the app's
    http_errors.path_hider: the server's directories by their setting's name)."""
    global _hide_in_model_failures
    _hide_in_model_failures = hide


def model_failure_text(kind, value, trace) -> str:
    """The text of a ModelError for an exception a model raised (called by the native executor):
    its type and message, no traceback, no server directory; the log keeps the traceback."""
    _model_log.error("a model failed on a batch", exc_info=(kind, value, trace))
    return _hide_in_model_failures(f"{kind.__name__}: {value}")


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
