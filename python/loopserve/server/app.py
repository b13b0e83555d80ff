"""The HTTP application: the Open Inference Protocol (KServe v2, as Triton speaks it).

The infer route is dispatched before Starlette sees the request (see infer.py); every other
route is an ordinary Starlette route here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import loopserve
from loopserve.errors import LoopserveError, ModelNotFound, hide_in_model_failures
from loopserve.server import openapi, triton_json
from loopserve.server.drift_routes import DriftRoutes
from loopserve.server.feedback_routes import FeedbackRoutes
from loopserve.server.auth import ManagementToken
from loopserve.server.body import SMALL_BODY_BYTES, read_body
from loopserve.server.http_errors import error_body, path_hider, status_of
from loopserve.server.admission import LoopLag
from loopserve.server.infer import InferEndpoint
from loopserve.server.metrics import ServerMetrics
from loopserve.server.protocol import ProtocolError
from loopserve.server.ui_routes import UiRoutes
from loopserve.server.wire import INFER_PATH
from loopserve.serving.model import Model
from loopserve.store import store_root
from loopserve.serving.repository import ModelRepository
from loopserve.serving.watch import RepositoryWatcher

log = logging.getLogger("loopserve.server")

class TrafficChange(msgspec.Struct, forbid_unknown_fields=True):
    weights: dict[int, float] | None = None
    shadow: list[int] | None = None
    promote: int | None = None
    rollback: bool = False


EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics", "schedule_policy"]


def json_response(content, status: int = 200) -> Response:
    return Response(msgspec.json.encode(content), status_code=status, media_type="application/json")


def error_response(exc: BaseException, hide_paths=str) -> Response:
    status, extra = status_of(exc)
    return Response(error_body(hide_paths(str(exc))), status_code=status, media_type="application/json",
                    headers={k.decode(): v.decode() for k, v in extra})


def _server_directories(repository: ModelRepository, store) -> dict[str, str]:
    """The directories whose absolute paths error messages may name, by the setting clients know them by."""
    out = {}
    for path, name in ((repository.root, "<model_repository>"), (str(store_root(store)), "<store>")):
        if path:
            out[str(path)] = out[os.path.realpath(path)] = name
    return out


def _refuse_load_overrides(body: bytes) -> None:
    """Triton's load may carry parameters.config (a config to use instead of the model's) and
    `file:` parameters (model files): not supported here, so refused rather than ignored."""
    if not body.strip():
        return
    try:
        params = msgspec.json.decode(body).get("parameters") or {}
        overrides = sorted(k for k in params if k == "config" or k.startswith("file:"))
    except (msgspec.DecodeError, AttributeError, TypeError, RecursionError):
        raise ProtocolError('a load request\'s body must be empty or a JSON object like {"parameters": {}}') from None
    if overrides:
        raise ProtocolError(f"a load with parameters {', '.join(overrides[:3])} is not supported: the model loads "
                            f"from its directory in the model repository (change its config.yaml or files there, "
                            f"then load)")


class LoopserveApp:
    """The ASGI application. Thread-safe as far as uvicorn needs: one event loop drives it."""

    def __init__(self, repository: ModelRepository, *, max_body_bytes: int = 64 << 20,
                 management_token: str | None = None, poll_s: float = 0.0, load_new_models: bool = True,
                 overload_wait_ms: float = 50.0, overload_min_connections: int = 64, store: str | None = None):
        self.repository = repository
        # The store the UI reads (the config's `store`; else the registry's; else loopserve.store's default).
        self.store = store or (repository.registry.store_root if repository.registry is not None else None)
        self.management_token = management_token
        self._authorize = ManagementToken(management_token).check
        self.watcher = (RepositoryWatcher(repository, poll_s, load_new_models)
                        if poll_s > 0 and (repository.root is not None or repository.registry) else None)
        self.metrics = ServerMetrics(repository)
        # Awaited once the server runs, and when it stops (before the models close): how the
        # multi-process server starts and stops its front ends (server/supervisor.py).
        self.on_startup: list = []
        self.on_shutdown: list = []
        # Awaited before the latency histograms are read (the front ends hold theirs).
        self.before_metrics: list = []
        self.ready = False
        # Overload (server/admission.py; http.overload_wait_ms and overload_min_connections).
        admission = LoopLag(overload_wait_ms, overload_min_connections, self.metrics.overload_refused)
        self.infer = InferEndpoint(repository, self.metrics, max_body_bytes, admission)
        self.infer.hide_paths = self.hide_paths = path_hider(_server_directories(repository, self.store))
        hide_in_model_failures(self.hide_paths)  # every path answers a model's failure with its text
        self.fast_infer = self.infer  # the HTTP protocol runs infer without ASGI (server/fastpath.py)
        per_model = [("", self.model_metadata), ("/ready", self.model_ready), ("/config", self.model_config),
                     ("/stats", self.model_stats)]
        traffic = [Route("/v2/models/{model}/traffic", self.traffic, methods=["GET"]),
                   Route("/v2/models/{model}/traffic", self.change_traffic, methods=["POST"])]
        routes = [
            Route("/v2/health/live", self.live),
            Route("/v2/health/ready", self.server_ready),
            Route("/v2", self.server_metadata),
            Route("/v2/openapi.json", self.openapi),
            Route("/v2/models/stats", self.model_stats),
            *traffic,
            *DriftRoutes(repository, self._authorize).routes(),
            *FeedbackRoutes(repository, self._authorize, max_body_bytes).routes(),
            *[Route("/v2/models/{model}" + path, endpoint) for path, endpoint in per_model],
            *[Route("/v2/models/{model}/versions/{version}" + path, endpoint) for path, endpoint in per_model],
            Route("/v2/repository/index", self.repository_index, methods=["POST"]),
            Route("/v2/repository/models/{model}/load", self.repository_load, methods=["POST"]),
            Route("/v2/repository/models/{model}/unload", self.repository_unload, methods=["POST"]),
            Route("/metrics", self.prometheus),
            *UiRoutes(repository, self.metrics, self._authorize, self.before_metrics, self.store,
                       self.hide_paths).routes(),
        ]
        # Every refusal is a LoopserveError carrying its status: one handler answers them all.
        # Only an unexpected exception reaches the `Exception` handler (which Starlette also
        # re-raises, so the server logs it).
        self.starlette = Starlette(routes=routes, lifespan=self._lifespan, exception_handlers={
            LoopserveError: self._on_error, Exception: self._on_error,
            404: self._not_found, 405: self._wrong_method})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = INFER_PATH.match(scope["path"])
            if match:
                await self.infer(scope, receive, send, match[1], match[2])
                return
        await self.starlette(scope, receive, send)

    # -- lifecycle ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        watching = asyncio.create_task(self.watcher.run()) if self.watcher else None
        for hook in self.on_startup:
            await hook()
        self.ready = True
        yield
        self.ready = False
        if watching:
            watching.cancel()
        for hook in self.on_shutdown:
            await hook()
        await asyncio.to_thread(self.repository.close)

    async def _on_error(self, request: Request, exc: Exception) -> Response:
        status, _ = status_of(exc)
        if status == 500:
            log.error("request failed", exc_info=exc, extra={"path": request.url.path})
        return error_response(exc, self.hide_paths)

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return json_response({"error": f"no route {request.method} {request.url.path}"}, 404)

    async def _wrong_method(self, request: Request, exc: Exception) -> Response:
        allowed = getattr(exc, "headers", None) or {}
        return Response(msgspec.json.encode({"error": f"{request.url.path} does not take {request.method}; it takes "
                                                      f"{allowed.get('Allow', 'other methods')}"}),
                        status_code=405, media_type="application/json", headers=allowed)

    # -- health and metadata --------------------------------------------------------------

    async def live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def server_ready(self, request: Request) -> Response:
        return json_response({"ready": self.ready}, 200 if self.ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        return json_response({"name": "loopserve", "version": loopserve.__version__, "extensions": EXTENSIONS})

    async def openapi(self, request: Request) -> Response:
        return Response(openapi.encoded(), media_type="application/json")

    def _model(self, request: Request) -> Model:
        return self.repository.get(request.path_params["model"], request.path_params.get("version"))

    async def model_metadata(self, request: Request) -> Response:
        model = self._model(request)
        return json_response(triton_json.model_metadata(model, sorted(self.repository.router(model.name).versions)))

    async def model_ready(self, request: Request) -> Response:
        try:
            model = self._model(request)
        except ModelNotFound as e:
            return error_response(e, self.hide_paths)
        return json_response({"name": model.name, "ready": True})

    async def model_config(self, request: Request) -> Response:
        return json_response(triton_json.model_config(self._model(request)))

    async def model_stats(self, request: Request) -> Response:
        if "model" in request.path_params:
            models = [self._model(request)]
        else:
            models = sorted(self.repository.models(), key=lambda m: m.name)
        return json_response({"model_stats": [triton_json.model_stats(m) for m in models]})

    # -- repository -----------------------------------------------------------------------

    async def repository_index(self, request: Request) -> Response:
        body = await read_body(request.receive, SMALL_BODY_BYTES)
        ready_only = False
        if body.strip():
            try:
                ready_only = bool(msgspec.json.decode(body).get("ready", False))
            except (msgspec.DecodeError, AttributeError, RecursionError):
                return json_response({"error": "repository index body must be a JSON object like "
                                               '{"ready": true}, or empty'}, 400)
        states = [msgspec.structs.replace(s, reason=self.hide_paths(s.reason)) if s.reason else s
                  for s in self.repository.index()]
        if ready_only:
            states = [s for s in states if s.state == "READY"]
        return json_response(states)

    async def repository_load(self, request: Request) -> Response:
        self._authorize(request)
        _refuse_load_overrides(await read_body(request.receive, SMALL_BODY_BYTES))
        # Built and warmed up off the loop; swapped in on it, at once for every request.
        await self.repository.load_async(request.path_params["model"])
        return json_response({})

    async def repository_unload(self, request: Request) -> Response:
        self._authorize(request)
        await self.repository.unload_async(request.path_params["model"])
        return json_response({})

    # -- traffic --------------------------------------------------------------------------

    async def traffic(self, request: Request) -> Response:
        """The routing state and each version's live metrics (what the rollback rule reads)."""
        router = self.repository.router(request.path_params["model"])
        for hook in self.before_metrics:
            await hook()
        metrics = {str(v): self.metrics.version_metrics(m) for v, m in sorted(router.versions.items())}
        return json_response({**msgspec.structs.asdict(router.state()), "metrics": metrics})

    async def change_traffic(self, request: Request) -> Response:
        """Body: any of {"weights": {"1": 90, "2": 10}, "shadow": [3], "promote": 2,
        "rollback": true}, applied in that order."""
        self._authorize(request)
        try:
            change = msgspec.json.decode(await read_body(request.receive, SMALL_BODY_BYTES), type=TrafficChange)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as e:
            raise ProtocolError(f"traffic change: {e}; expected a JSON object with any of weights "
                                '({"version": share}), shadow ([versions]), promote (version), rollback (true)') from None
        # Looked up after the body has arrived: the model may have been unloaded and loaded again meanwhile.
        router = self.repository.router(request.path_params["model"])
        if change.weights is not None or change.shadow is not None:
            router.set_traffic(change.weights, change.shadow)
        if change.promote is not None:
            router.promote(change.promote)
        if change.rollback:
            router.rollback()
        return json_response(router.state())

    async def prometheus(self, request: Request) -> Response:
        # On the loop thread, which alone writes the latency histograms: a consistent read.
        for hook in self.before_metrics:
            await hook()
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)
