"""What every infer route does with HTTP, in one process or in a front end: the route's path,
the headers it reads, its scheduling parameters, and sending an answer. Light on imports on
purpose: a front-end process imports it, and holds no model.

An infer handler (server/infer.py in one process, server/frontend.py in a front end) is
written without I/O, so that the ASGI route (`serve_asgi`) and the protocol-level fast path
(server/fastpath.py) run the very same steps and answer the very same errors:

  head(name, headers) -> context          the request's head; raises a refusal (4xx) early
  submit(context, name, version, body, start) -> (pending, finish)
                                          decode and hand off; raises a refusal
                                          (decode_and_submit: large bodies decode off the loop)
  finish(pending) -> (status, headers, body)   once `pending` is done; never raises
  refusal(exc, name) -> (status, headers, body)
  max_body_bytes
"""

from __future__ import annotations

import asyncio
import re
import time

import msgspec

from loopserve.server.body import read_body
from loopserve.server.http_errors import UnsupportedEncoding
from loopserve.server import protocol
from loopserve.server import heap
from loopserve.server.protocol import MAX_GROUP_BYTES, MAX_ROUTING_KEY_BYTES, ProtocolError, decode_request, decode_request_in_slices

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
    lower case, as uvicorn gives them), either None when absent. A compressed body is refused
    (415): it would otherwise be read as malformed JSON or tensors."""
    content_length = header_length = None
    for key, value in headers:
        if key == b"content-length":
            content_length = int(value)
        elif key == b"content-encoding" and value.strip().lower() not in (b"identity", b""):
            encoding = value[:40].decode("latin-1")
            raise UnsupportedEncoding(f"content encoding {encoding!r} is not supported: send the infer request's "
                                      f"body uncompressed (Content-Encoding: identity, or none)")
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
    `routing_key`: requests with the same key go to the same version under a traffic split.
    Ours, `group`, is checked here too (read where the prediction is recorded)."""
    if not params:
        return 0, -1, None
    priority = params.get("priority", 0)
    timeout = params.get("timeout", -1)
    key = params.get("routing_key")
    if key is not None and not isinstance(key, str):
        raise ProtocolError(f"parameter 'routing_key' must be a string, got {key!r}")
    if key is not None and len(key_bytes := key.encode("utf-8", "surrogatepass")) > MAX_ROUTING_KEY_BYTES:
        raise ProtocolError(f"parameter 'routing_key' must be at most {MAX_ROUTING_KEY_BYTES} bytes in UTF-8, "
                            f"got {len(key_bytes)}")
    group = params.get("group")
    if group is not None and len(group_bytes := msgspec.json.encode(group)) > MAX_GROUP_BYTES:
        raise ProtocolError(f"parameter 'group' must be at most {MAX_GROUP_BYTES} bytes as JSON, got "
                            f"{len(group_bytes)} (a group is kept with each prediction until its label comes)")
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


def decode_and_submit(body: bytes, header_length: int | None, submit, refusal):
    """A handler's submit step for a JSON or binary-extension body: `submit(request, arrays)` ->
    (pending, finish) once decoded. A body under protocol.OFF_LOOP_BYTES decodes inline; a larger
    one on a worker thread, its JSON data in slices, so that one large request does not stall
    every other connection of the process while it decodes (then `submit` runs on the loop, and
    `refusal(exc)` answers what decoding or submit refused)."""
    if len(body) < protocol.OFF_LOOP_BYTES:
        return submit(*decode_request(body, header_length))
    return _DecodedOffLoop(submit, refusal).start(body, header_length)


class _DecodedOffLoop:
    """One request decoded on a worker thread, then submitted. Its `pending` is done once the
    submitted request's is; `finish` is the submitted request's (or the refusal). On the loop's thread."""

    def __init__(self, submit, refusal):
        self.submit, self.refusal = submit, refusal
        self.pending = self.inner = self.inner_finish = self.refused = None
        self.abandoned = False

    def start(self, body, header_length):
        loop = asyncio.get_running_loop()
        self.pending = loop.create_future()
        decoding = loop.run_in_executor(None, decode_request_in_slices, body, header_length)
        decoding.add_done_callback(self._decoded)
        return self.pending, self.finish

    def _decoded(self, decoding) -> None:
        if self.abandoned:  # the server stopped meanwhile: nobody to answer, nothing submitted
            return
        try:
            self.inner, self.inner_finish = self.submit(*decoding.result())
        except Exception as exc:
            # Answered now, and the exception let go of: its traceback (this frame, whose
            # `decoding` holds the exception: a cycle) and its context's hold frames with the body
            # among their locals, which only a garbage collection (rare in a front end) freed.
            self.refused = self.refusal(exc)
            exc.__traceback__ = None
            self._done()
            return
        self.inner.add_done_callback(self._done)

    def _done(self, _=None) -> None:
        heap.trim_soon()  # the body's memory goes back to the system once it is let go of
        if not self.pending.done():
            self.pending.set_result(None)

    def finish(self, _pending):
        if self.inner_finish is not None:
            return self.inner_finish(self.inner)
        if self.refused is not None:
            return self.refused
        self.abandoned = True
        return None
