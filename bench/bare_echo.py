"""The ceiling of the HTTP stack we build on, for bench/serving.py: a bare ASGI app on uvicorn
(uvloop, httptools, one process) that reads the body and answers a fixed small JSON, on every
path. loopserve ÷ this is how much of its own HTTP stack loopserve keeps (target >= 0.6).

    .venv/bin/python bench/bare_echo.py --port 8000
"""

from __future__ import annotations

import argparse

import uvicorn

ANSWER = (b'{"model_name":"mlp","model_version":"1","outputs":[{"name":"OUTPUT0","datatype":"FP32",'
          b'"shape":[1,2],"data":[0.0,0.0]}]}')
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning",
                access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
