"""The hot path: POST /v2/models/{m}[/versions/{v}]/infer in a one-process server.

Decode the body (JSON, or JSON plus Triton's binary tensor data), submit to the model's
native batcher, and once the batch is done encode the answer. No routing framework, no
middleware, no per-request allocation we can avoid. The HTTP around it is the fast path's
(server/fastpath.py), or ASGI's for an app served by something else (server/wire.py).
"""

from __future__ import annotations

import functools
import logging
import time

import numpy as np

from loopserve.errors import InvalidInput, LoopserveError, ModelError
from loopserve.server.admission import LoopLag, Overloaded
from loopserve.server.http_errors import BodyTooLarge, error_body, status_of
from loopserve.server.metrics import ServerMetrics
from loopserve.server.wire import answer_headers, decode_and_submit, headers_of, scheduling_of, serve_asgi
from loopserve.server.protocol import NUMPY_DTYPES, ProtocolError, decode_raw, encode_response
from loopserve.serving.model import Model
from loopserve.serving.repository import ModelRepository
from loopserve.serving.router import VersionRouter

log = logging.getLogger("loopserve.server")

_JSON = [(b"content-type", b"application/json")]


def _raw_input(model: Model, body: bytes) -> dict[str, np.ndarray]:
    """Triton's raw binary form: the body is the one input tensor, rows by its size."""
    if len(model.inputs) != 1:
        raise ProtocolError(f"a raw binary request (Inference-Header-Content-Length: 0) needs a model with one input; "
                            f"model '{model.name}' has {len(model.inputs)}")
    spec = model.inputs[0]
    if spec.datatype == "BYTES" or any(d < 0 for d in spec.dims):
        raise ProtocolError(f"a raw binary request needs a fixed-size input; input '{spec.name}' is "
                            f"{spec.datatype} with dims {spec.dims}")
    shape = list(spec.dims)
    if model.config.max_batch_size > 0:
        row_bytes = int(np.prod(spec.dims, dtype=np.int64)) * NUMPY_DTYPES[spec.datatype].itemsize
        if row_bytes == 0 or len(body) % row_bytes:
            raise ProtocolError(f"raw binary body of {len(body)} bytes is not a whole number of rows of "
                                f"input '{spec.name}' ({row_bytes} bytes each)")
        shape = [len(body) // row_bytes] + shape
    return {spec.name: decode_raw(body, spec.name, spec.datatype, shape)}


def _check_datatypes(model: Model, request) -> None:
    """A clearer refusal than the batcher's for a request whose datatype differs."""
    declared = model.input_datatypes
    for inp in request.inputs:
        expected = declared.get(inp.name)
        if expected is not None and inp.datatype != expected:
            raise InvalidInput(f"input '{inp.name}' has datatype {inp.datatype}, but model '{model.name}' "
                               f"expects {expected}")


class InferEndpoint:
    """The infer route of a one-process server, without I/O (the steps server/wire.py names):
    the ASGI route and the fast path (server/fastpath.py) both run it. On the loop's thread."""

    def __init__(self, repository: ModelRepository, metrics: ServerMetrics, max_body_bytes: int, admission: LoopLag):
        self.repository = repository
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.admission = admission
        self.feedback = repository.services.feedback  # feedback: predictions recorded by request id
        self.hide_paths = str  # the app's: error messages name no server directory (http_errors.path_hider)

    async def __call__(self, scope, receive, send, name: str, version: str | None) -> None:
        await serve_asgi(self, scope, receive, send, name, version)

    def head(self, name: str, headers) -> tuple[VersionRouter, int | None]:
        content_length, header_length = headers_of(headers)
        if content_length is not None and content_length > self.max_body_bytes:
            raise BodyTooLarge(f"request body of {content_length} bytes is over the limit of "
                               f"{self.max_body_bytes} bytes (http.max_body_bytes)")
        router = self.repository.router(name)
        self.admission.check(name)
        return router, header_length

    def submit(self, context, name: str, version: str | None, body: bytes, start: float):
        router, header_length = context
        if header_length == 0:
            return self._submit(router, name, version, start, None, _raw_input(self.repository.get(name, version), body))
        return decode_and_submit(body, header_length, functools.partial(self._submit, router, name, version, start),
                                 lambda exc: self.refusal(exc, name))

    def _submit(self, router: VersionRouter, name: str, version: str | None, start: float, request, arrays):
        params = request.parameters if request is not None else None
        priority, timeout_us, key = scheduling_of(params)
        # From here to the submit nothing awaits: the version chosen is still loaded.
        model = router.acquire(version, key)
        try:
            if request is not None:
                _check_datatypes(model, request)
            pending = model.infer(arrays, priority=priority, timeout_us=timeout_us)
        except BaseException:
            router.release(model)
            raise
        for shadow in router.shadows(model):
            _send_shadow(router, shadow, arrays)
        self.admission.in_flight += 1
        return pending, functools.partial(self._finish, router, model, request, arrays, start)

    def _finish(self, router: VersionRouter, model: Model, request, arrays, start: float, pending):
        self.admission.in_flight -= 1
        try:
            if not pending.done() or pending.cancelled():  # the server stops: nobody to answer
                pending.cancel()
                return None
            error = pending.exception()
            if error is not None:
                return self.refusal(error, model.name)
            outputs = pending.result()
            params = request.parameters if request is not None else None
            binary_default = bool(params.get("binary_data_output", False)) if params else False
            # feedback: the prediction is recorded under the request id; a request that sent none
            # gets one made here, returned in the response's `id` (loopserve.monitor.feedback).
            track = self.feedback.track(model)
            request_id = request.id if request is not None else None
            if not request_id and track is not None:
                request_id = self.feedback.new_id()
            payload, json_length = encode_response(
                model.name, str(model.version), request_id, outputs,
                request.outputs if request is not None else None, binary_default)
            if track is not None:
                track.record(request_id, arrays, outputs, params)  # feedback (never raises)
        except Exception as exc:
            return self.refusal(exc, model.name)
        finally:
            router.release(model)
        self.metrics.latency(model.name, str(model.version)).observe(time.perf_counter() - start)
        return 200, answer_headers(json_length), payload

    def refusal(self, exc: BaseException, name: str):
        if type(exc) is Overloaded:
            return self.admission.answer
        status, extra = status_of(exc)
        if status == 500:
            log.error("infer failed", extra={"model": name, "error": str(exc)},
                      exc_info=not isinstance(exc, ModelError))
        return status, [*_JSON, *extra], error_body(self.hide_paths(str(exc)))


def _send_shadow(router, model: Model, arrays) -> None:
    """A copy of the request for a shadow version: run and measured, never answering. Its
    refusals and failures are its own (counted in its statistics), never the client's."""
    try:
        pending = model.infer(arrays)
    except LoopserveError:
        return
    router.hold(model)
    pending.add_done_callback(lambda f: (f.cancelled() or f.exception(), router.release(model)))
