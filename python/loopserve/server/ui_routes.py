"""The web UI: its pages at /ui (static files) and the JSON routes they read under /ui/api.

Reading needs no token, except the drift histogram (drift data, guarded as the drift report is);
promote and roll back need the management token, as the traffic route does. Pages also read the existing routes: /v2/models/{m}/drift, /v2/models/{m}/feedback,
and POST /v2/models/{m}/traffic (weights). README.md lists every route the pages read.
"""

from __future__ import annotations

from typing import Callable

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from loopserve.server.body import SMALL_BODY_BYTES, read_body
from loopserve.server.drift_routes import NoDriftMonitor
from loopserve.server.protocol import ProtocolError
from loopserve.tracking.errors import RunNotFound
from loopserve.ui import STATIC_DIR, actions, live_views, store_views

MAX_LIMIT = 500


class VersionChoice(msgspec.Struct, forbid_unknown_fields=True):
    version: int


def _json(content, status: int = 200) -> Response:
    return Response(msgspec.json.encode(content), status_code=status, media_type="application/json")


class UiRoutes:
    def __init__(self, repository, metrics, authorize: Callable[[Request], None], before_metrics: list = (),
                 store: str | None = None, hide_paths: Callable[[str], str] = str):
        self.repository = repository
        self.metrics = metrics
        self.authorize = authorize
        self.before_metrics = before_metrics  # awaited before latency is read (front ends hold theirs)
        self.store_root = store  # the server's store (None: $LOOPSERVE_STORE or ./.loopserve)
        self.hide_paths = hide_paths  # the app's: error messages name no server directory

    def routes(self) -> list:
        api = "/ui/api"
        return [
            Route("/ui", lambda request: RedirectResponse("/ui/", status_code=308)),
            Route(api + "/models", self.models, methods=["GET"]),
            Route(api + "/models/{model}/histogram", self.histogram, methods=["GET"]),
            Route(api + "/models/{model}/promote", self.promote, methods=["POST"]),
            Route(api + "/models/{model}/rollback", self.rollback, methods=["POST"]),
            Route(api + "/registry", self.registry, methods=["GET"]),
            Route(api + "/runs", self.runs, methods=["GET"]),
            Route(api + "/runs/{run}", self.run, methods=["GET"]),
            Route(api + "/pipeline", self.pipeline, methods=["GET"]),
            Mount("/ui", StaticFiles(directory=STATIC_DIR, html=True), name="ui"),
        ]

    # -- reading --------------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        for hook in self.before_metrics:
            await hook()
        alerts = await run_in_threadpool(live_views.drift_alerts, self.repository)
        return _json(live_views.models_view(self.repository, self.metrics, alerts))

    async def histogram(self, request: Request) -> Response:
        """Query: feature=NAME (required), version=V (default: the stable version). Drift data:
        the management token, as the drift report."""
        self.authorize(request)
        name = request.path_params["model"]
        feature = request.query_params.get("feature")
        if not feature:
            raise ProtocolError("query parameter feature is required: the name of a monitored feature")
        version = request.query_params.get("version") or str(self.repository.router(name).stable)
        model = self.repository.get(name, version)
        if model.drift is None:
            raise NoDriftMonitor(f"model '{name}' version {model.version} has no drift monitor (its version "
                                 "directory has no reference profile, or drift.enabled is false)")
        return _json(await run_in_threadpool(live_views.histogram_view, model, feature))

    async def registry(self, request: Request) -> Response:
        return _json(await run_in_threadpool(store_views.registry_view, self.store_root))

    async def runs(self, request: Request) -> Response:
        """Query: limit=N (default 50)."""
        return _json(await run_in_threadpool(store_views.runs_view, self.store_root, _limit(request)))

    async def run(self, request: Request) -> Response:
        try:
            return _json(await run_in_threadpool(store_views.run_view, self.store_root, request.path_params["run"]))
        except RunNotFound as e:
            return _json({"error": self.hide_paths(str(e))}, 404)

    async def pipeline(self, request: Request) -> Response:
        """Query: limit=N (default 50)."""
        return _json(await run_in_threadpool(store_views.pipeline_view, self.store_root, _limit(request)))

    # -- actions (management token) -------------------------------------------------------

    async def promote(self, request: Request) -> Response:
        """Body {"version": N}: all traffic to version N."""
        self.authorize(request)
        name = request.path_params["model"]
        router = self.repository.router(name)
        try:
            version = msgspec.json.decode(await read_body(request.receive, SMALL_BODY_BYTES), type=VersionChoice).version
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise ProtocolError(f"promote: {e}; expected a JSON object like {{\"version\": 2}}") from None
        if live_views.follows_registry(self.repository, name):
            registered, alias, canary = actions.registry_target(self.repository, name)
            events = await run_in_threadpool(actions.promote_in_registry, self.store_root, registered, alias,
                                             canary, version)
            return _json({"follows": "registry", "alias_moves": events})
        router.promote(version)
        return _json({"follows": "router", "traffic": router.state()})

    async def rollback(self, request: Request) -> Response:
        """Registry models: end the canary, else move the alias back one step; others: all
        traffic back to the stable version."""
        self.authorize(request)
        name = request.path_params["model"]
        router = self.repository.router(name)
        if live_views.follows_registry(self.repository, name):
            registered, alias, canary = actions.registry_target(self.repository, name)
            events = await run_in_threadpool(actions.roll_back_in_registry, self.store_root, registered, alias, canary)
            return _json({"follows": "registry", "alias_moves": events})
        router.rollback()
        return _json({"follows": "router", "traffic": router.state()})


def _limit(request: Request) -> int:
    value = request.query_params.get("limit", "50")
    if not (value.isascii() and value.isdigit()) or not 0 < int(value) <= MAX_LIMIT:
        raise ProtocolError(f"query parameter limit={value!r}: expected a number from 1 to {MAX_LIMIT}")
    return int(value)
