"""How every refusal becomes an HTTP response: JSON {"error": "..."} with the status the
exception carries (loopserve.errors); anything else is a 500."""

from __future__ import annotations

import os
from typing import Callable

import msgspec

from loopserve.errors import LoopserveError


class BodyTooLarge(LoopserveError):
    """The request body is over http.max_body_bytes."""

    status = 413


class ClientDisconnected(LoopserveError):
    """The connection closed before the request's body arrived (or a limit closed it)."""

    status = 400


class UnsupportedEncoding(LoopserveError):
    """A request body with a Content-Encoding (gzip, deflate) the server does not decode."""

    status = 415


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


def path_hider(paths: dict[str, str]) -> Callable[[str], str]:
    """A client's copy of an error message, with each of the server's own directories (given by
    absolute path) named by its setting instead: the logs keep the paths, a refusal does not
    tell a client where the server keeps its files."""
    pairs = sorted(((path, name) for path, name in paths.items() if path and os.path.isabs(path)),
                   key=lambda pair: -len(pair[0]))  # the longest first: a store inside the repository

    def hide(message: str) -> str:
        for path, name in pairs:
            if path in message:
                message = message.replace(path, name)
        return message

    return hide
