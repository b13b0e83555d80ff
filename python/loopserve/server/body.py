"""Reading a request body, bounded: past the limit the request is refused with 413."""

from __future__ import annotations

from loopserve.server import heap
from loopserve.server.http_errors import BodyTooLarge, ClientDisconnected

# Routes whose bodies are a few bytes of JSON (repository index, traffic changes): a larger
# body is refused as soon as it passes this, whatever http.max_body_bytes allows infer.
SMALL_BODY_BYTES = 64 << 10
# The routes that take large bodies are bounded by http.max_body_bytes: infer, and feedback,
# which is bounded by this too (a million labels).
MAX_FEEDBACK_BYTES = 64 << 20
# From this size on a body's chunks are copied into one buffer as they arrive: joined at the end,
# 64 MiB were one copy of 30-50 ms on the event loop (every other connection waiting).
GATHER_BYTES = 1 << 20


def add_chunk(parts: list[bytes] | bytearray, size: int, chunk: bytes) -> list[bytes] | bytearray:
    """Adds a chunk to a body of `size` bytes so far (the chunk not counted): `parts` as it
    grows, a list of chunks until GATHER_BYTES, then one bytearray (see `whole`)."""
    if type(parts) is list:
        parts.append(chunk)
        if size + len(chunk) >= GATHER_BYTES:
            heap.trim_soon()  # what this body leaves behind goes back to the system
            return bytearray().join(parts)
    else:
        parts += chunk
    return parts


def whole(parts: list[bytes] | bytearray) -> bytes | memoryview:
    """The body: bytes, or a read-only view of the buffer a large body was gathered into (tensors
    decoded from it are read-only views, as they are of bytes)."""
    if type(parts) is list:
        return parts[0] if len(parts) == 1 else b"".join(parts)
    return memoryview(parts).toreadonly()


def body_limit(path: str, max_body_bytes: int) -> int:
    """The largest body a route takes (in one process as in a front end)."""
    if path.endswith("/feedback"):
        return min(max_body_bytes, MAX_FEEDBACK_BYTES)
    return max_body_bytes if path.endswith("/infer") else SMALL_BODY_BYTES


def over_limit(limit: int) -> BodyTooLarge:
    """The refusal of a body that passed `limit` bytes."""
    setting = "" if limit == SMALL_BODY_BYTES else " (http.max_body_bytes)"
    return BodyTooLarge(f"request body is over the limit of {limit} bytes for this route{setting}")


async def read_body(receive, limit: int) -> bytes | memoryview:
    parts: list[bytes] | bytearray = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":  # a partial body is no request
            raise ClientDisconnected("the connection closed before the request's body arrived")
        chunk = message.get("body", b"")
        if chunk:
            if size + len(chunk) > limit:
                raise over_limit(limit)
            parts = add_chunk(parts, size, chunk)
            size += len(chunk)
        if not message.get("more_body", False):
            break
    return whole(parts)
