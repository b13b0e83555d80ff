"""A front end's forward of every route but infer to the engine process (its Unix socket):
the request as the client sent it (target, Host, body), the engine's answer as it gave it.
What the client sees is what a one-process server answers."""

from __future__ import annotations

import asyncio

from loopserve.server.body import body_limit, read_body
from loopserve.server.http_errors import BodyTooLarge, error_body
from loopserve.server.wire import JSON_HEADERS as _JSON, send_response

_HOP_HEADERS = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length"}
# Not passed back from the engine: this process's uvicorn writes its own date.
_ANSWER_HOP_HEADERS = _HOP_HEADERS | {b"date"}
# Routes with these methods read no body (as in one process, a body sent is read and dropped).
_BODILESS_METHODS = ("GET", "HEAD")
_RETRY = [(b"retry-after", b"1")]


class EngineForward:
    """The ASGI app of the forwarded routes. On the front end's event loop."""

    def __init__(self, engine_uds: str, max_body_bytes: int, engine_gone: asyncio.Event):
        self.engine_uds = engine_uds
        self.max_body_bytes = max_body_bytes
        self.engine_gone = engine_gone
        self.client = None

    def start(self) -> None:
        import httpx

        self.client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=self.engine_uds),
                                        base_url="http://engine", timeout=None)

    async def close(self) -> None:
        await self.client.aclose()

    async def __call__(self, scope, receive, send) -> None:
        import httpx

        method = scope["method"]
        try:
            if method in _BODILESS_METHODS:
                await _drop_body(receive)
                body = b""
            else:
                body = await read_body(receive, body_limit(scope["path"], self.max_body_bytes))
        except BodyTooLarge as exc:
            await send_response(send, 413, _JSON, error_body(str(exc)))
            return
        # The path as the client sent it (still percent-encoded): decoded, %0D or %01 is no URL.
        raw_path = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1") + (("?" + scope["query_string"].decode("latin-1"))
                                             if scope["query_string"] else "")
        # The client's Host goes along: the engine's redirects (a trailing slash) name the client's host.
        headers = [(k, v) for k, v in scope["headers"] if k not in _HOP_HEADERS]
        try:
            response = await self._request(method, path, headers, bytes(body))  # httpx takes bytes
        except httpx.InvalidURL as exc:  # raw bytes a URL cannot carry: the client's mistake
            await send_response(send, 400, _JSON, error_body(f"the request's path or query is not a valid URL: {exc}"))
            return
        except Exception as exc:  # the engine is gone
            await send_response(send, 503, _JSON + _RETRY,
                                error_body(f"the server's engine process did not answer: {exc}"))
            return
        out_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.multi_items()
                       if k.encode("latin-1") not in _ANSWER_HOP_HEADERS]
        if method == "HEAD":  # no body, and the length the engine's GET would have
            length = response.headers.get("content-length", "0").encode("latin-1")
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": out_headers + [(b"content-length", length)]})
            await send({"type": "http.response.body", "body": b""})
            return
        await send_response(send, response.status_code, out_headers, response.content)

    async def _request(self, method: str, path: str, headers, body: bytes):
        import httpx

        # The engine binds its socket just after the front ends start: a request in that
        # moment waits for it rather than failing.
        for attempt in range(40):
            try:
                # The request target as the client sent it: httpx would resolve dot segments.
                return await self.client.request(method, path, headers=headers, content=body,
                                                 extensions={"target": path.encode("latin-1")})
            except httpx.ConnectError:
                if attempt == 39 or self.engine_gone.is_set():
                    raise
                await asyncio.sleep(0.05)


async def _drop_body(receive) -> None:
    """Reads a body nobody reads, a chunk at a time (none kept)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return
