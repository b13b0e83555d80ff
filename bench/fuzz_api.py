"""Fuzz the HTTP API from its OpenAPI description (GET /v2/openapi.json) with Schemathesis.

    python bench/fuzz_api.py [--max-time S] [--workers N]        # starts its own server, then stops it
    python bench/fuzz_api.py --url http://127.0.0.1:PORT --token T [--max-time S] [--seed N]

Checks: no 5xx, and every answer's status, content type and body as the description says.
Exit status: Schemathesis's (0 when nothing failed). `make fuzz-api` runs ten minutes;
tests/test_openapi.py runs it for seconds against each kind of server.

Its own server serves the tiny MLP with a drift profile (so the drift routes answer, not
404) and a management token, which every request carries.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
TOKEN = "fuzz-token"


def _patch_hypothesis_lambda_descriptions() -> None:
    """Hypothesis names a filter's lambda by parsing its module's source, which on CPython 3.11.7
    can raise SystemError ("AST constructor recursion depth mismatch", a CPython bug fixed in later
    releases) inside Schemathesis's generators. The name is only for display: fall back to none."""
    from hypothesis.internal import lambda_sources

    describe = lambda_sources._lambda_description

    def safe(f, *args, **kwargs):
        try:
            return describe(f, *args, **kwargs)
        except SystemError:
            return "lambda: <unknown>"

    lambda_sources._lambda_description = safe


def run_schemathesis(url: str, token: str, max_time: int, seed: int | None, extra: list[str]) -> int:
    _patch_hypothesis_lambda_descriptions()
    from schemathesis.cli import schemathesis

    args = ["--config-file", str(Path(__file__).with_suffix(".toml")), "run", f"{url}/v2/openapi.json", "--max-time", str(max_time), "--checks", CHECKS,
            "-H", f"Authorization: Bearer {token}", "--request-timeout", "60", "--workers", "2",
            "--phases", "examples,coverage,fuzzing", "--suppress-health-check", "all",
            # an unload of the one model would leave every later request a 404
            "--exclude-path", "/v2/repository/models/{model}/unload", *extra]
    if seed is not None:
        args += ["--seed", str(seed)]
    try:
        schemathesis.main(args, prog_name="schemathesis")
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def fuzz_model_root(root: Path) -> Path:
    """The tiny MLP, with a reference profile so its drift routes answer."""
    import numpy as np
    import torch

    from loopserve import zoo
    from loopserve.monitor.profile import build_profile

    module = zoo.tiny_mlp()
    reference = np.random.default_rng(0).standard_normal((2000, 32)).astype(np.float32)
    with torch.no_grad():
        outputs = module(torch.from_numpy(reference)).numpy()
    model_dir = zoo.write_model_dir(root, "mlp", module, fmt="onnx",
                                    extra_config="drift:\n  window_seconds: 0\n  policy: {min_rows: 10}\n")
    build_profile(reference, outputs=outputs, output_names=["y0", "y1"]).save(model_dir / "1")
    return root


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running server (else one is started here)")
    p.add_argument("--token", default=TOKEN, help="its management token")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-time", type=int, default=600)
    p.add_argument("--seed", type=int)
    args, extra = p.parse_known_args()
    if args.url:
        return run_schemathesis(args.url, args.token, args.max_time, args.seed, extra)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import RunningServer
    from loopserve.server.app import LoopserveApp
    from loopserve.serving.repository import ModelRepository

    with tempfile.TemporaryDirectory() as tmp:
        repository = ModelRepository(fuzz_model_root(Path(tmp)))
        repository.load("mlp")
        server = RunningServer(LoopserveApp(repository, management_token=TOKEN), workers=args.workers)
        try:
            return run_schemathesis(server.base_url, TOKEN, args.max_time, args.seed, extra)
        finally:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
