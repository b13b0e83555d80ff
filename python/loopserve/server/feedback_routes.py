"""Feedback over HTTP: `POST /v2/models/{m}/feedback` (ground-truth labels for earlier request
ids), `GET /v2/models/{m}/feedback` (live metrics per version and window), and the Prometheus
families. The store itself is loopserve.monitor.feedback; the server keeps one per repository
(`store_for`).

    POST /v2/models/fraud/feedback  {"labels": [{"id": "req-1", "label": 1}, {"id": "req-2", "label": [0, 1]}]}
                                    or {"id": "req-1", "label": 1}
    -> {"model": "fraud", "joined": 1, "unknown": 0, "duplicate": 0, "expired": 1, "invalid": 0,
        "items": [{"id": "req-1", "status": "joined", "version": "2"}, {"id": "req-2", "status": "expired", ...}]}
"""

from __future__ import annotations

import weakref
from typing import Iterable, Union

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from loopserve.errors import ModelNotFound
from loopserve.monitor.feedback import FeedbackStore, ModelFeedback
from loopserve.server.protocol import ProtocolError

_stores: "weakref.WeakKeyDictionary[object, FeedbackStore]" = weakref.WeakKeyDictionary()
MAX_FEEDBACK_BYTES = 64 << 20


def store_for(repository) -> FeedbackStore:
    """The feedback store of a model repository (one per repository, made on first use)."""
    store = _stores.get(repository)
    if store is None:
        store = _stores[repository] = FeedbackStore()
    return store


Scalar = Union[bool, int, float, str]


class LabelItem(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    label: Union[Scalar, list[Scalar]]


class FeedbackBody(msgspec.Struct, forbid_unknown_fields=True):
    labels: list[LabelItem] | None = None
    id: str | None = None
    label: Union[Scalar, list[Scalar], None] = None


EXPECTED = ('expected {"labels": [{"id": "<request id>", "label": <number, string or a list of them, one per '
            'row>}, ...]} or {"id": "<request id>", "label": ...}')

_decoder = msgspec.json.Decoder(FeedbackBody)


class NoFeedback(ModelNotFound):
    pass


def decode_feedback(body: bytes) -> list[tuple[str, object]]:
    """[(request id, label)] from a feedback body; ProtocolError (400) saying what was expected."""
    try:
        parsed = _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ProtocolError(f"feedback body: {e}; {EXPECTED}") from None
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
    def __init__(self, repository):
        self.repository = repository
        self.store = store_for(repository)

    def routes(self) -> list[Route]:
        return [Route("/v2/models/{model}/feedback", self.post, methods=["POST"]),
                Route("/v2/models/{model}/feedback", self.get, methods=["GET"])]

    def _model(self, name: str) -> ModelFeedback:
        router = self.repository.routers.get(name)
        if router is not None:
            for model in router.versions.values():
                self.store.track(model)  # so a model with no request yet answers "unknown", not 404
        mf = self.store.models.get(name)
        if mf is not None:
            return mf
        if router is None or not router.versions:
            self.repository.router(name)  # raises ModelNotFound with its reason
        raise NoFeedback(f"model '{name}' has feedback off: its config says feedback.enabled: false")

    async def post(self, request: Request) -> Response:
        name = request.path_params["model"]
        mf = self._model(name)
        from loopserve.server.infer import read_body

        # Bounded as infer bodies are (64 MiB; refused with 413 past it).
        items = decode_feedback(await read_body(request.receive, MAX_FEEDBACK_BYTES))
        result, joined = mf.join(items)  # in memory, on the loop: microseconds per label
        if joined and mf.spill is not None:
            await run_in_threadpool(mf.spill.write, joined)  # file appends, off the loop
        return Response(msgspec.json.encode(result), media_type="application/json")

    async def get(self, request: Request) -> Response:
        """Query: windows=N (the last N closed windows per version, default 5, and as many
        prediction-time windows) or windows=all."""
        name = request.path_params["model"]
        self._model(name)
        report = self.store.report(name, _windows(request.query_params.get("windows")))
        return Response(msgspec.json.encode(report), media_type="application/json")


def _windows(value: str | None) -> int | None:
    if value is None:
        return 5
    if value == "all":
        return None
    if value.isdigit():
        return int(value)
    raise ProtocolError(f"query parameter windows={value!r}: expected a number of windows or 'all'")


class FeedbackCollector(Collector):
    """Live metrics per version (`window` = "cumulative": every label so far; "last": the
    latest closed window) and label counts per status."""

    def __init__(self, repository):
        self.store = store_for(repository)

    def collect(self) -> Iterable:
        labels = ["model", "version", "window"]
        families = {
            "accuracy": GaugeMetricFamily("loopserve_live_accuracy", "Share of labelled rows predicted right",
                                          labels=labels),
            "precision": GaugeMetricFamily("loopserve_live_precision",
                                           "Binary: labelled positives among rows predicted positive", labels=labels),
            "recall": GaugeMetricFamily("loopserve_live_recall",
                                        "Binary: rows predicted positive among labelled positives", labels=labels),
        }
        rows = CounterMetricFamily("loopserve_live_labels", "Labelled rows joined to predictions",
                                   labels=["model", "version"])
        counts = CounterMetricFamily("loopserve_feedback_labels", "Feedback labels (request ids) by answer",
                                     labels=["model", "version", "status"])
        for name in sorted(self.store.models):
            for version, live in self.store.live_metrics(name, last=1).items():
                v = str(version)
                rows.add_metric([name, v], live.cumulative.labels)
                windows = [("cumulative", live.cumulative)] + [("last", w) for w in live.windows[-1:]]
                for window, metrics in windows:
                    for field, family in families.items():
                        value = getattr(metrics, field)
                        if value is not None:
                            family.add_metric([name, v, window], value)
        for name, version, status, n in self.store.label_counts():
            counts.add_metric([name, version, status], n)
        yield from families.values()
        yield rows
        yield counts
