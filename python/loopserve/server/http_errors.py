"""How every refusal becomes an HTTP response: JSON {"error": "..."} with the right status."""

from __future__ import annotations

import msgspec

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
from loopserve.server.protocol import ProtocolError


class BodyTooLarge(Exception):
    """The request body is over http.max_body_bytes."""


class Unauthorized(LoopserveError):
    """A management route without the right bearer token."""


# exception type -> (status, extra headers)
_STATUS: list[tuple[type, int, list[tuple[bytes, bytes]]]] = [
    (ProtocolError, 400, []),
    (InvalidInput, 400, []),
    (ConfigError, 400, []),
    (Unauthorized, 401, [(b"www-authenticate", b"Bearer")]),
    (ModelNotFound, 404, []),
    (BodyTooLarge, 413, []),
    (QueueFull, 429, [(b"retry-after", b"1")]),
    (Unavailable, 503, [(b"retry-after", b"1")]),
    (TimedOut, 504, []),
    (ModelError, 500, []),
]


def status_of(exc: BaseException) -> tuple[int, list[tuple[bytes, bytes]]]:
    for type_, status, headers in _STATUS:
        if isinstance(exc, type_):
            return status, headers
    return 500, []


def error_body(message: str) -> bytes:
    return msgspec.json.encode({"error": message})
