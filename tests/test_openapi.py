"""The OpenAPI description (GET /v2/openapi.json, server/openapi.py) says what the routes are,
and Schemathesis, fuzzing a live server from it for a few seconds (bench/fuzz_api.py), finds no
5xx and no answer that breaks it. `make fuzz-api` runs the same for ten minutes."""

import subprocess
import sys
from pathlib import Path

import msgspec
from starlette.routing import Mount, Route

from loopserve.server import openapi
from loopserve.server.app import LoopserveApp
from loopserve.serving.repository import ModelRepository

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "fuzz-token"
UNDESCRIBED = {"/ui"}  # the UI's redirect to its pages (static files, under the /ui mount)


def served_operations(app: LoopserveApp) -> set[tuple[str, str]]:
    """(path, method) of every route the application answers, infer included."""
    operations = set()
    for route in app.starlette.routes:
        if isinstance(route, Mount) or route.path in UNDESCRIBED:
            continue
        assert isinstance(route, Route)
        operations |= {(route.path, m.lower()) for m in route.methods if m != "HEAD"}
    # Dispatched before Starlette (server/infer.py; the front ends' own route with workers > 1).
    operations |= {("/v2/models/{model}/infer", "post"), ("/v2/models/{model}/versions/{version}/infer", "post")}
    return operations


def test_the_description_names_every_route_and_no_other(drift_model_root):
    app = LoopserveApp(ModelRepository(drift_model_root))
    described = {(path, method) for path, item in openapi.document()["paths"].items() for method in item}
    assert served_operations(app) == described


def test_schemathesis_finds_no_server_error_and_no_answer_off_the_description(serve, drift_model_root, tmp_path):
    repository = ModelRepository(drift_model_root)
    repository.load("mlp")
    server = serve(LoopserveApp(repository, management_token=TOKEN))
    status, _, raw = server.request("GET", "/v2/openapi.json")
    assert status == 200 and msgspec.json.decode(raw) == openapi.document()
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "fuzz_api.py"), "--url", server.base_url,
                          "--token", TOKEN, "--max-time", "12", "--seed", "12"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)  # its cache: not in the repo
    report = run.stdout[-6000:]
    assert run.returncode == 0, report
    assert " passed" in report and "failed" not in report.split("SUMMARY")[-1], report
    assert server.request("GET", "/v2/health/ready")[0] == 200


def test_percent_encoded_control_characters_in_a_path_are_a_client_mistake(serve, drift_model_root):
    """Found by Schemathesis: a front end forwarded the decoded path to the engine, and a %01 or %0D
    in it made no URL: 503 'the engine did not answer'. The path goes on as the client sent it."""
    server = serve(LoopserveApp(ModelRepository(drift_model_root)))
    for path in ("/v2/models/%01x/ready", "/v2/models/a%0Db/versions/1", "/ui/api/runs/%1A"):
        status, _, raw = server.request("GET", path)
        assert status == 404 and "error" in msgspec.json.decode(raw), (path, status, raw)
