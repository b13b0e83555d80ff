"""How every refusal becomes an HTTP response: JSON {"error": "..."} with the status the
exception carries (loopserve.errors); anything else is a 500."""

from __future__ import annotations

import msgspec

from loopserve.errors import LoopserveError


class BodyTooLarge(LoopserveError):
    """The request body is over http.max_body_bytes."""

    status = 413


class ClientDisconnected(LoopserveError):
    """The connection closed before the request's body arrived (or a limit closed it)."""

    status = 400


class Unauthorized(LoopserveError):
    """A management route without the right bearer token."""

    status = 401
    headers = ((b"www-authenticate", b"Bearer"),)


def status_of(exc: BaseException) -> tuple[int, tuple[tuple[bytes, bytes], ...]]:
    """(status, extra headers) of an exception."""
    if isinstance(exc, LoopserveError):
        return exc.status, exc.headers
    return 500, ()


def error_body(message: str) -> bytes:
    return msgspec.json.encode({"error": message})
