"""Drift routes: `GET /v2/models/{m}[/versions/{v}]/drift` (the report), `.../drift/sketch`
(the serialized accumulators, to merge the windows of several replicas) and `.../drift/profile`
(the reference profile and policy a fleet view judges the merged windows with)."""

from __future__ import annotations

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from loopserve.errors import ModelNotFound
from loopserve.server.protocol import ProtocolError
from loopserve.serving.model import Model
from loopserve.serving.repository import ModelRepository

DEFAULT_WINDOWS = 5


class NoDriftMonitor(ModelNotFound):
    pass


class DriftRoutes:
    def __init__(self, repository: ModelRepository, authorize=lambda request: None):
        self.repository = repository
        self.authorize = authorize  # the management token (server/auth.py): the data served is the clients'

    def routes(self) -> list[Route]:
        out = []
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            out += [Route(prefix + "/drift", self.report, methods=["GET"]),
                    Route(prefix + "/drift/sketch", self.sketch, methods=["GET"]),
                    Route(prefix + "/drift/profile", self.profile, methods=["GET"])]
        return out

    def _monitored(self, request: Request) -> Model:
        self.authorize(request)
        model = self.repository.get(request.path_params["model"], request.path_params.get("version"))
        if model.drift is None:
            raise NoDriftMonitor(f"model '{model.name}' version {model.version} has no drift monitor: its version "
                                 f"directory needs a reference profile ({model.config.drift.profile}, made by "
                                 f"loopserve.monitor.profile.build_profile) and drift.enabled true")
        return model

    async def report(self, request: Request) -> Response:
        """Query: windows=N (the last N windows, default 5) or windows=all; open=false leaves
        out the window still filling."""
        model = self._monitored(request)
        last = _windows_param(request.query_params.get("windows"))
        include_open = _bool_param(request.query_params.get("open", "true"), "open")
        # Off the event loop: statistics over many features take milliseconds.
        report = await run_in_threadpool(model.drift.report, include_open, last)
        report.live = self.repository.services.feedback.window_metrics(model.name, model.version, last)
        return Response(msgspec.json.encode(report), media_type="application/json")

    async def sketch(self, request: Request) -> Response:
        """JSON (accumulators base64-encoded), or msgpack with `Accept: application/msgpack`."""
        model = self._monitored(request)
        payload = await run_in_threadpool(model.drift.sketch)
        if "application/msgpack" in request.headers.get("accept", ""):
            return Response(msgspec.msgpack.encode(payload), media_type="application/msgpack")
        return Response(msgspec.json.encode(payload), media_type="application/json")


    async def profile(self, request: Request) -> Response:
        """{model, version, profile, policy, window_seconds, window_rows}: all a fleet view needs to
        give merged windows the verdict this replica gives its own."""
        model = self._monitored(request)
        config = model.drift.config
        body = {"model": model.name, "version": str(model.version), "profile": model.drift.profile,
                "policy": config.policy, "window_seconds": config.window_seconds, "window_rows": config.window_rows}
        return Response(msgspec.json.encode(body), media_type="application/json")


MAX_WINDOWS = 2**31 - 1  # the native monitors take a C integer


def _windows_param(value: str | None) -> int | None:
    if value is None:
        return DEFAULT_WINDOWS
    if value == "all":
        return None
    if value.isascii() and value.isdigit() and int(value) > 0:
        return min(int(value), MAX_WINDOWS)  # more than any history holds: all of them
    raise ProtocolError(f"query parameter windows={value!r}: expected a positive number of windows or 'all'")


def _bool_param(value: str, name: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise ProtocolError(f"query parameter {name}={value!r}: expected true or false")
