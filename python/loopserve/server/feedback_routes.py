"""Feedback over HTTP: `POST /v2/models/{m}/feedback` (ground-truth labels for earlier request
ids) and `GET /v2/models/{m}/feedback` (live metrics per version and window); their Prometheus
families are in metrics.py. The store itself is loopserve.monitor.feedback; each repository has
one, attached to its versions through the repository's hooks (loopserve.serving.services).

    POST /v2/models/fraud/feedback  {"labels": [{"id": "req-1", "label": 1}, {"id": "req-2", "label": [0, 1]}]}
                                    or {"id": "req-1", "label": 1}
    -> {"model": "fraud", "joined": 1, "unknown": 0, "duplicate": 0, "expired": 1, "invalid": 0,
        "items": [{"id": "req-1", "status": "joined", "version": "2"}, {"id": "req-2", "status": "expired", ...}]}
"""

from __future__ import annotations

import re
from typing import Annotated, Union

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from loopserve.errors import ModelNotFound
from loopserve.monitor.feedback import ModelFeedback
from loopserve.server import heap, json_slices, protocol
from loopserve.server.body import MAX_FEEDBACK_BYTES, body_limit, read_body
from loopserve.server.protocol import MAX_REQUEST_ID_LENGTH, TOO_DEEP, ProtocolError


Scalar = Union[bool, int, float, str]


RequestId = Annotated[str, msgspec.Meta(max_length=MAX_REQUEST_ID_LENGTH)]


class LabelItem(msgspec.Struct, forbid_unknown_fields=True, gc=False):  # untracked: a body holds up to a million
    id: RequestId
    label: Union[Scalar, list[Scalar]]


class FeedbackBody(msgspec.Struct, forbid_unknown_fields=True):
    labels: list[LabelItem] | None = None
    id: RequestId | None = None
    label: Union[Scalar, list[Scalar], None] = None


EXPECTED = ('expected {"labels": [{"id": "<request id>", "label": <number, string or a list of them, one per '
            'row>}, ...]} or {"id": "<request id>", "label": ...}')

_decoder = msgspec.json.Decoder(FeedbackBody)
_items_decoder = msgspec.json.Decoder(list[LabelItem])
# A large body (protocol.OFF_LOOP_BYTES or more) is decoded on a worker thread in slices, and
# must be the labels form alone: its array is found without decoding the rest.
_LABELS_HEAD = re.compile(rb'[ \t\r\n]*\{[ \t\r\n]*"labels"[ \t\r\n]*:[ \t\r\n]*\[')  # JSON's whitespace, not \s's
_LABELS_TAIL = re.compile(rb'\][ \t\r\n]*\}[ \t\r\n]*\Z')
_EDGE = 64
LARGE_FORM = ('a feedback body of 1 MiB or more must be {"labels": [...]} with nothing else (it is decoded in '
              'slices)')


class NoFeedback(ModelNotFound):
    pass


def decode_feedback(body: bytes) -> list[tuple[str, object]]:
    """[(request id, label)] from a feedback body; ProtocolError (400) saying what was expected."""
    try:
        parsed = _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ProtocolError(f"feedback body: {e}; {EXPECTED}") from None
    except RecursionError:
        raise ProtocolError(f"feedback body: {TOO_DEEP}") from None
    return _items_of(parsed)


def decode_feedback_in_slices(body: bytes) -> list[tuple[str, object]]:
    """decode_feedback for a large body on a worker thread: the same items and messages, the
    labels decoded a slice at a time (json_slices.objects_in_slices), so that the GIL, and with
    it the event loop, comes back between slices."""
    view = memoryview(body)
    tail_from = max(len(view) - _EDGE, 0)
    head = _LABELS_HEAD.match(bytes(view[:_EDGE]))
    tail = _LABELS_TAIL.search(bytes(view[tail_from:]))
    if head is None or tail is None or tail_from + tail.start() < head.end():
        raise ProtocolError(f"feedback body: {LARGE_FORM}; {EXPECTED}")

    def decode_piece(piece: bytes, first: int) -> list[LabelItem]:
        try:
            return _items_decoder.decode(b"[" + piece + b"]")
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            message = re.sub(r"\$\[(\d+)\]", lambda m: f"$.labels[{int(m[1]) + first}]", str(e))
            message = re.sub(r"\(byte \d+\)", f"(in the labels from index {first} on)", message)
            raise ProtocolError(f"feedback body: {message}; {EXPECTED}") from None
        except RecursionError:
            raise ProtocolError(f"feedback body: {TOO_DEEP}") from None

    try:
        labels = json_slices.objects_in_slices(view, head.end(), tail_from + tail.start(), decode_piece)
    except msgspec.DecodeError as e:  # between slices: a missing or trailing comma
        raise ProtocolError(f"feedback body: {e}; {EXPECTED}") from None
    return _items_of(FeedbackBody(labels=labels))


def _items_of(parsed: FeedbackBody) -> list[tuple[str, object]]:
    if parsed.labels is not None:
        if parsed.id is not None or parsed.label is not None:
            raise ProtocolError(f"feedback body has both 'labels' and 'id'/'label': send one form; {EXPECTED}")
        if not parsed.labels:
            raise ProtocolError(f"feedback body: 'labels' is empty; {EXPECTED}")
        return [(item.id, item.label) for item in parsed.labels]
    if parsed.id is None or parsed.label is None:
        raise ProtocolError(f"feedback body needs 'labels', or both 'id' and 'label'; {EXPECTED}")
    return [(parsed.id, parsed.label)]


class FeedbackRoutes:
    def __init__(self, repository, authorize=lambda request: None, max_body_bytes: int = MAX_FEEDBACK_BYTES):
        self.repository = repository
        self.max_body_bytes = max_body_bytes  # http.max_body_bytes (feedback takes at most MAX_FEEDBACK_BYTES)
        # The management token (server/auth.py): anyone who could post labels could skew live
        # accuracy and the data the pipeline retrains on.
        self.authorize = authorize
        self.store = repository.services.feedback

    def routes(self) -> list[Route]:
        return [Route("/v2/models/{model}/feedback", self.post, methods=["POST"]),
                Route("/v2/models/{model}/feedback", self.get, methods=["GET"])]

    def _model(self, name: str) -> ModelFeedback:
        # Each version's record starts when it loads (the repository's hooks), so a model with
        # no request yet answers "unknown", not 404.
        mf = self.store.models.get(name)
        if mf is not None:
            return mf
        self.repository.router(name)  # raises ModelNotFound with its reason
        raise NoFeedback(f"model '{name}' has feedback off: its config says feedback.enabled: false")

    async def post(self, request: Request) -> Response:
        self.authorize(request)
        name = request.path_params["model"]
        mf = self._model(name)
        # Bounded by http.max_body_bytes, and MAX_FEEDBACK_BYTES (refused with 413 past it).
        body = await read_body(request.receive, body_limit(request.url.path, self.max_body_bytes))
        if len(body) < protocol.OFF_LOOP_BYTES:
            result, joined = mf.join(decode_feedback(body))  # in memory, on the loop: microseconds per label
            answer = [msgspec.json.encode(result)]
        else:  # a large body (up to a million labels): decoded, joined and encoded off the loop
            answer, joined = await run_in_threadpool(_join_large, mf, body)
            heap.trim_soon()  # the labels' memory goes back to the system once they are let go of
        if joined and mf.spill is not None:
            await run_in_threadpool(self.store.spill, name, joined)  # file appends, off the loop
        if len(answer) == 1:
            return Response(answer[0], media_type="application/json")
        # Sent part by part: joined into one, tens of MB would be copied holding the GIL.
        return StreamingResponse(iter(answer), media_type="application/json",
                                 headers={"content-length": str(sum(map(len, answer)))})

    async def get(self, request: Request) -> Response:
        """Query: windows=N (the last N closed windows per version, default 5, and as many
        prediction-time windows) or windows=all."""
        name = request.path_params["model"]
        self._model(name)
        report = self.store.report(name, _windows(request.query_params.get("windows")))
        return Response(msgspec.json.encode(report), media_type="application/json")


def _join_large(mf: ModelFeedback, body: bytes) -> tuple[list[bytes], list]:
    """A large body's answer and joined examples, on a worker thread: the labels decoded in
    slices, joined in chunks (the model's lock, which the infer path takes too, is released
    between them), and the answer encoded in chunks."""
    result, joined = mf.join_in_chunks(decode_feedback_in_slices(body))
    return encode_in_chunks(result), joined


def encode_in_chunks(result, chunk: int = 5000) -> list[bytes]:
    """msgspec.json.encode(result) of a FeedbackResult in parts that add up to it, its items
    encoded `chunk` at a time."""
    items = result.items
    if len(items) <= chunk:
        return [msgspec.json.encode(result)]
    head = msgspec.json.encode(msgspec.structs.replace(result, items=[]))
    assert head.endswith(b'"items":[]}')
    parts = [head[:-2]]
    for i in range(0, len(items), chunk):
        parts.append((b"," if i else b"") + msgspec.json.encode(items[i:i + chunk])[1:-1])
    parts.append(b"]}")
    return parts


def _windows(value: str | None) -> int | None:
    if value is None:
        return 5
    if value == "all":
        return None
    if value.isascii() and value.isdigit():  # not '²', which isdigit() takes and int() refuses
        return int(value)
    raise ProtocolError(f"query parameter windows={value!r}: expected a number of windows or 'all'")
