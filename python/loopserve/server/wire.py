"""What every infer route does with HTTP, in one process or in a front end: the route's path,
the headers it reads, its scheduling parameters, and sending an answer. Light on imports on
purpose: a front-end process imports it, and holds no model.

An infer handler (server/infer.py in one process, server/frontend.py in a front end) is
written without I/O, so that the ASGI route (`serve_asgi`) and the protocol-level fast path
(server/fastpath.py) run the very same steps and answer the very same errors:

  head(name, headers) -> context          the request's head; raises a refusal (4xx) early
  submit(context, name, version, body, start) -> (pending, finish)
                                          decode and hand off; raises a refusal
  finish(pending) -> (status, headers, body)   once `pending` is done; never raises
  refusal(exc, name) -> (status, headers, body)
  max_body_bytes
"""

from __future__ import annotations

import asyncio
import re
import time

from loopserve.server.body import read_body
from loopserve.server.protocol import ProtocolError

INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
JSON_HEADERS = [(b"content-type", b"application/json")]


def answer_headers(json_length: int | None) -> list[tuple[bytes, bytes]]:
    """The headers of an infer answer: JSON, or Triton's binary form with the JSON part's length."""
    if json_length is None:
        return JSON_HEADERS
    return [(b"content-type", b"application/octet-stream"),
            (b"inference-header-content-length", str(json_length).encode())]


def headers_of(headers) -> tuple[int | None, int | None]:
    """(Content-Length, Inference-Header-Content-Length) of a head's (name, value) pairs (names
    lower case, as uvicorn gives them), either None when absent."""
    content_length = header_length = None
    for key, value in headers:
        if key == b"content-length":
            content_length = int(value)
        elif key == b"inference-header-content-length":
            try:
                header_length = int(value)
            except ValueError:
                raise ProtocolError(f"Inference-Header-Content-Length must be an integer, got {value[:40]!r}") from None
            if header_length < 0:
                raise ProtocolError("Inference-Header-Content-Length must not be negative")
    return content_length, header_length


def scheduling_of(params) -> tuple[int, int, str | None]:
    """Triton's request parameters `priority` and `timeout` (microseconds), and ours,
    `routing_key`: requests with the same key go to the same version under a traffic split."""
    if not params:
        return 0, -1, None
    priority = params.get("priority", 0)
    timeout = params.get("timeout", -1)
    key = params.get("routing_key")
    if key is not None and not isinstance(key, str):
        raise ProtocolError(f"parameter 'routing_key' must be a string, got {key!r}")
    # The batcher takes a C int and int64: larger values are the client's mistake, answered 400.
    if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority < 2**31:
        raise ProtocolError(f"parameter 'priority' must be an integer from 0 to {2**31 - 1}, got {priority!r}")
    if not isinstance(timeout, int) or isinstance(timeout, bool) or not -2**63 <= timeout < 2**63:
        raise ProtocolError(f"parameter 'timeout' must be an integer number of microseconds that fits "
                            f"64 bits, got {timeout!r}")
    return priority, timeout, key


async def send_response(send, status: int, headers: list, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": headers + [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def serve_asgi(handler, scope, receive, send, name: str, version: str | None) -> None:
    """An infer request through ASGI: the handler's steps around an awaited body and answer."""
    start = time.perf_counter()
    try:
        context = handler.head(name, scope["headers"])
        body = await read_body(receive, handler.max_body_bytes)
        pending, finish = handler.submit(context, name, version, body, start)
    except Exception as exc:  # every refusal is answered; the server serves on
        status, headers, payload = handler.refusal(exc, name)
    else:
        if not pending.done():
            # A batch the loop runs itself is scheduled for the loop's next turn, ahead of
            # this task's wake-up from sleep(0): so the answer is ready when the task
            # resumes, one turn sooner than waiting on the future's own wake-up.
            await asyncio.sleep(0)
        try:
            await pending
        except Exception:
            pass  # a refusal or failure the model's answer carries: finish answers it
        finally:  # cancelled too (the server stops): finish still releases what the request held
            answer = finish(pending)
        status, headers, payload = answer
    await send_response(send, status, headers, payload)
