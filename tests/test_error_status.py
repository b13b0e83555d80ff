"""An error carries its HTTP status: the server answers every refusal from the exception's own
`status` and `headers`, through one handler, without logging a traceback for a refusal."""

import logging

import msgspec
import pytest

from loopserve import Model
from loopserve.errors import ConfigError, InvalidInput, ModelError, ModelNotFound, QueueFull, TimedOut, Unavailable
from loopserve.registry.errors import UnknownModel
from loopserve.server.app import LoopserveApp
from loopserve.server.feedback_routes import MAX_FEEDBACK_BYTES
from loopserve.server.http_errors import BodyTooLarge, Unauthorized, status_of
from loopserve.server.protocol import ProtocolError
from loopserve.serving.repository import ModelRepository

from conftest import vector_config


@pytest.mark.parametrize("exc, status, headers", [
    (ProtocolError("x"), 400, {}), (InvalidInput("x"), 400, {}), (ConfigError("x"), 400, {}),
    (Unauthorized("x"), 401, {b"www-authenticate": b"Bearer"}), (ModelNotFound("x"), 404, {}),
    (UnknownModel("x"), 404, {}), (BodyTooLarge("x"), 413, {}), (QueueFull("x"), 429, {b"retry-after": b"1"}),
    (Unavailable("x"), 503, {b"retry-after": b"1"}), (TimedOut("x"), 504, {}), (ModelError("x"), 500, {}),
    (RuntimeError("x"), 500, {}),
])
def test_status_is_the_exceptions_own(exc, status, headers):
    assert status_of(exc) == (status, tuple(headers.items()))


def test_oversized_feedback_is_a_413_without_a_traceback(serve, caplog):
    repository = ModelRepository()
    repository.add(Model.from_callable(lambda inputs: {"y": inputs["x"]}, vector_config(name="m", max_batch_size=4)))
    server = serve(LoopserveApp(repository))
    with caplog.at_level(logging.ERROR):
        code, headers, body = server.request("POST", "/v2/models/m/feedback", b" " * (MAX_FEEDBACK_BYTES + 1))
        assert code == 413 and "over the limit" in msgspec.json.decode(body)["error"]
        assert server.request("GET", "/v2/health/live")[0] == 200
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
