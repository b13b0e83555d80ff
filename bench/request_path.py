"""What one infer request costs a front end, step by step (µs per request, CPU of this process).

The steps a front-end process runs for every infer request (server/frontend.py), each timed
alone in a loop over the same tiny-MLP request (32 floats, shape [1, 32]):

  decode JSON      protocol.decode_request of the JSON body
  decode binary    protocol.decode_request of Triton's binary form (header + raw bytes)
  hand-off         FrontendChannel.submit + drain: the request into the shared-memory ring, the
                   engine's ingress routing it to an echo model and writing the answer back,
                   the answer copied out; 64 requests in flight, as under load. This process
                   plays both sides, so the figure includes the engine's share.
  encode JSON      protocol.encode_response of the answer as JSON
  encode binary    protocol.encode_response with binary outputs

Not here: uvicorn's own HTTP parsing and socket I/O (bench/serving.py measures the bare
uvicorn echo beside loopserve). The figures are absolute microseconds on this machine, for the
budget in DESIGN.md: read them against each other, not against another run.

    .venv/bin/python bench/request_path.py [--n 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import struct
import time

import numpy as np


def per_call_us(fn, n: int) -> float:
    fn()
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1e6


def main() -> int:
    from loopserve import _core
    from loopserve.config import ModelConfig
    from loopserve.serving.model import Model
    from loopserve.server.protocol import decode_request, encode_response

    import msgspec

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    n = parser.parse_args().n

    row = [round(0.01 * i, 2) for i in range(32)]
    json_body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 32], "datatype": "FP32", "data": row}]}).encode()
    header = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 32], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 128}}],
                         "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}).encode()
    binary_body = header + struct.pack("<32f", *row)
    request, arrays = decode_request(json_body, None)
    brequest, _ = decode_request(binary_body, len(header))
    outputs = {"OUTPUT0": np.array([[0.25, -0.5]], np.float32)}

    config = msgspec.convert({"name": "mlp", "max_batch_size": 64,
                              "inputs": [{"name": "INPUT0", "datatype": "FP32", "dims": [32]}],
                              "outputs": [{"name": "INPUT0", "datatype": "FP32", "dims": [32]}]}, ModelConfig)
    model = Model(config, _echo_backend(config))
    router = _core.Router()
    router.set_model("mlp", [(1, model._batcher, None)], [(1.0, 1)], [])
    ingress = _core.Ingress(router)
    handle = ingress.open_channel(8 << 20)
    channel = _core.FrontendChannel(os.dup(handle.memfd), os.dup(handle.request_efd), os.dup(handle.response_efd))
    inputs = list(arrays.items())

    def hand_off_batch(depth: int = 64) -> None:
        for token in range(depth):
            assert channel.submit(token, "mlp", "", "", "", "", 0, -1, False, inputs) == 0
        got = 0
        while got < depth:
            got += len(channel.drain())
            if got < depth and channel.prepare_sleep():
                select.select([channel.fd], [], [], 1.0)

    steps = [
        ("decode JSON", per_call_us(lambda: decode_request(json_body, None), n)),
        ("decode binary", per_call_us(lambda: decode_request(binary_body, len(header)), n)),
        ("hand-off (both sides)", per_call_us(hand_off_batch, max(1, n // 64)) / 64),
        ("encode JSON", per_call_us(lambda: encode_response("mlp", "1", None, outputs, request.outputs, False), n)),
        ("encode binary", per_call_us(lambda: encode_response("mlp", "1", None, outputs, brequest.outputs, False), n)),
    ]
    ingress.stop()
    model.close()
    print(f"{'step':<24}{'µs / request':>14}")
    for name, us in steps:
        print(f"{name:<24}{us:>14.2f}")
    return 0


def _echo_backend(config):
    from loopserve.backends.python_backend import PythonBackend

    return PythonBackend(config, lambda inputs: {"INPUT0": inputs["INPUT0"]}, "echo")


if __name__ == "__main__":
    raise SystemExit(main())
