"""The hop between a front end and the engine (workers > 1) polls before it sleeps
(http.spin_us): the engine's ingress polls its rings for an adaptive window, a front end with
few clients polls for its answer. What must hold whatever the machine's load: every answer is
right; a poll never waits out a slow model again and again (the front end's window closes);
an idle engine stops polling; by default (spin_us 0) nothing polls. (Whether a poll catches a message
depends on the machine's load, and is measured in bench/, not asserted here.)"""

import http.client
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import msgspec

from loopserve.demo.hotswap import wait_ready
from loopserve.demo.setup import stop_processes

from conftest import free_port
from test_workers import ADD_ONE, INT_IO, children, infer, until, write_model

SLOW_ADD_ONE = """
    import time

    def infer(inputs):
        time.sleep(0.02)
        return {"y": inputs["x"] + 1}
"""


def serve(tmp_path: Path, port: int, spin_us: int | None = None):
    repo = write_model(tmp_path / "models", "quick", ADD_ONE, "max_batch_size: 8\n" + INT_IO)
    write_model(repo, "slow", SLOW_ADD_ONE, "max_batch_size: 8\n" + INT_IO)
    config = tmp_path / "server.yaml"
    config.write_text(f"model_repository: {repo}\n" + (f"http:\n  spin_us: {spin_us}\n" if spin_us is not None else ""))
    # The hop polled is the front ends' to the engine: the Python infer path (the native one has no hop).
    proc = subprocess.Popen([sys.executable, "-m", "loopserve.cli", "serve", "--config", str(config),
                             "--port", str(port), "--workers", "2", "--no-native-infer"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_ready(port, proc)
    until(lambda: len(children(proc.pid)) == 2, what="the front ends")
    return proc


def polls(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60).read().decode()
    out = {}
    for outcome, side, value in re.findall(r'loopserve_hop_polls_total\{outcome="(\w+)",side="(\w+)"\} (\S+)', text):
        out[f"{outcome}_{side}"] = float(value)
    out["window_us"] = float(re.search(r"^loopserve_hop_poll_window_us (\S+)", text, re.M)[1])
    return out


def test_a_slow_model_closes_the_front_ends_poll_and_an_idle_engine_stops_polling(tmp_path):
    port = free_port()
    proc = serve(tmp_path, port, spin_us=100)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i in range(12):  # one client, one request at a time: the front end polls for each answer
            status, body = infer(port, "slow", i, conn)
            assert status == 200 and body["outputs"][0]["data"] == [i + 1]
        seen = polls(port)
        # 20 ms of model never fits a 100 µs poll: each miss halves the window (100, 50, 25, 12
        # µs), then it stays closed for 256 turns. Two front ends at most took the connection.
        assert seen["caught_frontend"] == 0
        assert 1 <= seen["missed_frontend"] <= 8
        for i in range(200):
            status, body = infer(port, "quick", i, conn)
            assert status == 200 and body["outputs"][0]["data"] == [i + 1]
        conn.close()
        # Idle: each 200 ms the ingress sleeps through halves its window, down to none.
        until(lambda: polls(port)["window_us"] == 0, what="the engine's poll window to close while idle")
    finally:
        stop_processes(proc)


def test_by_default_nothing_polls(tmp_path):
    port = free_port()
    proc = serve(tmp_path, port)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i in range(50):
            status, body = infer(port, "quick", i, conn)
            assert status == 200 and body["outputs"][0]["data"] == [i + 1]
        conn.close()
        assert polls(port) == {"caught_engine": 0, "caught_frontend": 0, "missed_frontend": 0, "window_us": 0}
    finally:
        stop_processes(proc)
