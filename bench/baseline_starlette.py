"""The "no batching, nothing in between" serving baseline for bench/serving.py.

A hand-written minimal Starlette app on uvicorn (uvloop, httptools, one worker) with a single
route, `POST /v2/models/mlp/infer`: it decodes the Open Inference Protocol JSON request with
msgspec, runs the tiny MLP (32 -> 64 -> 2, the same weights Triton and loopserve serve) for
that one request with onnxruntime (one intra-op thread), and answers the protocol's JSON
response. No queue, no batcher, no config or stats routes (so perf_analyzer cannot drive
it; wrk can). `GET /v2/health/ready` is there so the harness can wait for it.

Its latency at concurrency 1 is the floor loopserve must come within 1.2x of.

    .venv/bin/python bench/baseline_starlette.py --port 8000
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import msgspec
import numpy as np
import onnxruntime as ort
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

MODEL = "mlp"
N_IN = 32


class InputTensor(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferRequest(msgspec.Struct):
    inputs: list[InputTensor]
    id: str | None = None
    outputs: list[dict] | None = None
    parameters: dict | None = None


class OutputTensor(msgspec.Struct):
    name: str
    datatype: str
    shape: list[int]
    data: list[float]


class InferResponse(msgspec.Struct, omit_defaults=True):
    model_name: str
    model_version: str
    outputs: list[OutputTensor]
    id: str | None = None


def build_session(workdir: Path) -> ort.InferenceSession:
    from loopserve import zoo  # torch is needed only to export the model, once

    path = zoo.export_onnx(zoo.tiny_mlp(), workdir / "mlp.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def make_app(session: ort.InferenceSession) -> Starlette:
    decoder = msgspec.json.Decoder(InferRequest)
    encoder = msgspec.json.Encoder()
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name

    def error(status: int, message: str) -> Response:
        return Response(encoder.encode({"error": message}), status_code=status, media_type="application/json")

    async def infer(request: Request) -> Response:
        try:
            req = decoder.decode(await request.body())
            tensor = req.inputs[0]
            x = np.asarray(tensor.data, dtype=np.float32).reshape(-1, N_IN)
        except (msgspec.ValidationError, msgspec.DecodeError, IndexError, ValueError) as exc:
            return error(400, f"bad request: {exc}")
        y = session.run([output_name], {input_name: x})[0]
        body = InferResponse(
            model_name=MODEL, model_version="1", id=req.id,
            outputs=[OutputTensor(name=output_name, datatype="FP32", shape=list(y.shape), data=y.ravel().tolist())],
        )
        return Response(encoder.encode(body), media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response(b"", status_code=200)

    return Starlette(routes=[
        Route(f"/v2/models/{MODEL}/infer", infer, methods=["POST"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()

    import uvicorn

    with tempfile.TemporaryDirectory(prefix="baseline-mlp-") as tmp:
        app = make_app(build_session(Path(tmp)))
        uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", http="httptools", workers=1,
                    log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
