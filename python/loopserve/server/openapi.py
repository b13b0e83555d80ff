"""The OpenAPI 3.1 description of the HTTP API, served at `GET /v2/openapi.json`.

The request bodies' schemas come from the msgspec Structs the routes decode with (so they
cannot drift from the decoders); the paths are listed here, and tests/test_openapi.py checks
them against the application's routes both ways. Schemathesis fuzzes a live server from this
description (tests/test_openapi.py briefly, `make fuzz-api` for longer).
"""

from __future__ import annotations

import functools

import msgspec

import loopserve

_MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}, "example": "mlp"}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}, "example": "1"}
_WINDOWS = {"name": "windows", "in": "query", "required": False,
            "schema": {"type": "string", "pattern": "^([0-9]+|all)$"}, "description": "a number of windows, or all"}
_JSON = "application/json"
_ERROR = {"description": "refused: what was wrong and what was expected",
          "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
_ANY = {"type": "object"}


def _ok(schema: dict | None = None, media: str = _JSON, description: str = "OK") -> dict:
    return {"description": description, "content": {media: {"schema": schema or _ANY}}}


def _op(summary: str, ok: dict, *refusals: int, params: list = (), body: str | None = None, auth: bool = False,
        body_required: bool = True, extra: dict | None = None) -> dict:
    responses = {"200": ok, **(extra or {})}
    # 400 anywhere: a bad query value, path or header is refused saying what was expected.
    for status in sorted({*refusals, 400, 404, 405, 413} if body else {*refusals, 400, 404, 405}):
        responses[str(status)] = _ERROR
    if auth:
        responses["401"] = _ERROR
    operation = {"summary": summary, "parameters": list(params), "responses": responses}
    if body is not None:
        operation["requestBody"] = {"required": body_required,
                                    "content": {_JSON: {"schema": {"$ref": f"#/components/schemas/{body}"}}}}
    if auth:
        operation["security"] = [{"bearer": []}]
    return operation


def _per_model(prefix: str, params: list) -> dict[str, dict]:
    """The routes a model and a model version both have."""
    return {
        prefix: {"get": _op("model metadata (inputs, outputs, versions, platform)", _ok(), params=params)},
        prefix + "/ready": {"get": _op("200 when the model (version) serves", _ok(), params=params)},
        prefix + "/config": {"get": _op("Triton's model configuration", _ok(), params=params)},
        prefix + "/stats": {"get": _op("Triton's statistics", _ok(), params=params)},
        prefix + "/infer": {"post": _op(
            "inference (JSON; Triton's binary tensor extension via Inference-Header-Content-Length)", _ok(),
            429, 500, 503, 504, params=params, body="InferRequest")},
        prefix + "/drift": {"get": _op("the drift report", _ok(), params=[*params, _WINDOWS, {
            "name": "open", "in": "query", "required": False,
            "schema": {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no"]}}], auth=True)},
        prefix + "/drift/sketch": {"get": _op("the windows' serialized accumulators", _ok(), params=params, auth=True)},
        prefix + "/drift/profile": {"get": _op("the reference profile and drift policy", _ok(), params=params,
                                               auth=True)},
    }


@functools.lru_cache(maxsize=1)
def document() -> dict:
    """The whole description (built once)."""
    from loopserve.server.app import TrafficChange
    from loopserve.server.feedback_routes import FeedbackBody
    from loopserve.server.protocol import InferRequest
    from loopserve.server.ui_routes import VersionChoice

    _, schemas = msgspec.json.schema_components([InferRequest, FeedbackBody, TrafficChange, VersionChoice],
                                                ref_template="#/components/schemas/{name}")
    schemas["Error"] = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
    schemas["RepositoryIndexRequest"] = {"type": "object", "properties": {"ready": {"type": "boolean"}}}
    model, version = [_MODEL], [_MODEL, _VERSION]
    limit = {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1,
                                                                            "maximum": 500}}
    paths = {
        "/v2/health/live": {"get": _op("liveness", _ok())},
        "/v2/health/ready": {"get": _op("readiness", _ok(), 503)},
        "/v2": {"get": _op("server metadata and extensions", _ok())},
        "/v2/openapi.json": {"get": _op("this description", _ok())},
        "/v2/models/stats": {"get": _op("every model's statistics", _ok())},
        **_per_model("/v2/models/{model}", model),
        **_per_model("/v2/models/{model}/versions/{version}", version),
        "/v2/models/{model}/traffic": {
            "get": _op("weights, shadows, stable version and per-version metrics", _ok(), params=model),
            "post": _op("change weights, shadows; promote; roll back", _ok(), 409, params=model, body="TrafficChange",
                        auth=True)},
        "/v2/models/{model}/feedback": {
            "get": _op("live accuracy per version and window", _ok(), params=[*model, _WINDOWS]),
            "post": _op("true labels for earlier request ids", _ok(), params=model, body="FeedbackBody", auth=True)},
        "/v2/repository/index": {"post": _op("every model with its state", _ok({"type": "array"}),
                                             body="RepositoryIndexRequest", body_required=False)},
        "/v2/repository/models/{model}/load": {"post": _op("load or reload (a hot swap)", _ok(), 400, 500,
                                                           params=model, auth=True)},
        "/v2/repository/models/{model}/unload": {"post": _op("unload", _ok(), params=model, auth=True)},
        "/metrics": {"get": _op("Prometheus", _ok({"type": "string"}, "text/plain"))},
        "/ui/api/models": {"get": _op("the UI's models page", _ok())},
        "/ui/api/models/{model}/histogram": {"get": _op("reference and current histogram of a feature", _ok(), 400,
                                                        params=[*model, {"name": "feature", "in": "query",
                                                                         "required": True, "schema": {"type": "string"}},
                                                                {"name": "version", "in": "query", "required": False,
                                                                 "schema": {"type": "string"}}], auth=True)},
        "/ui/api/models/{model}/promote": {"post": _op("all traffic to a version", _ok(), 409, params=model,
                                                       body="VersionChoice", auth=True)},
        "/ui/api/models/{model}/rollback": {"post": _op("roll back", _ok(), 400, 409, params=model, auth=True)},
        "/ui/api/registry": {"get": _op("registry versions, lineage and alias history", _ok())},
        "/ui/api/runs": {"get": _op("the newest runs", _ok(), 400, params=[limit])},
        "/ui/api/runs/{run}": {"get": _op("one run", _ok(), params=[{"name": "run", "in": "path", "required": True,
                                                                      "schema": {"type": "string"}}])},
        "/ui/api/pipeline": {"get": _op("pipeline runs", _ok(), 400, params=[limit])},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "loopserve", "version": loopserve.__version__,
                 "description": "The Open Inference Protocol (KServe v2, as Triton speaks it) and loopserve's own "
                                "routes: traffic, drift, feedback, the model repository, the UI's JSON."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def encoded() -> bytes:
    return msgspec.json.encode(document())
