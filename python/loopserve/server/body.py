"""Reading a request body, bounded: past the limit the request is refused with 413."""

from __future__ import annotations

from loopserve.server.http_errors import BodyTooLarge, ClientDisconnected

# Routes whose bodies are a few bytes of JSON (repository index, traffic changes): a larger
# body is refused as soon as it passes this, whatever http.max_body_bytes allows infer.
SMALL_BODY_BYTES = 64 << 10
# The routes that take large bodies (infer, feedback) are bounded by http.max_body_bytes.
LARGE_BODY_ROUTES = ("/infer", "/feedback")


def body_limit(path: str, max_body_bytes: int) -> int:
    """The largest body a route takes."""
    return max_body_bytes if path.endswith(LARGE_BODY_ROUTES) else SMALL_BODY_BYTES


def over_limit(limit: int) -> BodyTooLarge:
    """The refusal of a body that passed `limit` bytes."""
    setting = "" if limit == SMALL_BODY_BYTES else " (http.max_body_bytes)"
    return BodyTooLarge(f"request body is over the limit of {limit} bytes for this route{setting}")


async def read_body(receive, limit: int) -> bytes:
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":  # a partial body is no request
            raise ClientDisconnected("the connection closed before the request's body arrived")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise over_limit(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
