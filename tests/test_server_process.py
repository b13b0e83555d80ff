"""`loopserve serve` as a process: start-up errors, and SIGTERM that loses nothing."""

import http.client
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import msgspec
import pytest

from loopserve.demo.hotswap import wait_ready

from conftest import free_port, wait_until


def loopserve(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "loopserve.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.parametrize(
    "server_yaml, model_yaml, fragments",
    [
        ("http: {prot: 1}\n", None, ["server.yaml", "unknown field `prot`", "$.http"]),
        ("http: {port: big}\n", None, ["server.yaml", "Expected `int`, got `str`", "$.http.port"]),
        ("log_level: loud\n", None, ["server.yaml", "$.log_level"]),
        ("models: [mlp]\n", "max_batch_size: many\n", ["mlp/config.yaml", "Expected `int`", "$.max_batch_size"]),
        ("models: [mlp]\n", "batching: {}\n", ["mlp/config.yaml", "unknown field `batching`"]),
        ("models: [nothere]\n", None, ["model 'nothere' is not in the repository"]),
    ],
)
def test_bad_config_stops_start_up_with_a_clear_message(tmp_path, model_repo, server_yaml, model_yaml, fragments):
    shutil.copytree(model_repo / "mlp_onnx", tmp_path / "models" / "mlp")
    if model_yaml:
        (tmp_path / "models" / "mlp" / "config.yaml").write_text(model_yaml)
    (tmp_path / "server.yaml").write_text("model_repository: models\n" + server_yaml)
    proc = loopserve("serve", "--config", str(tmp_path / "server.yaml"), "--port", str(free_port()))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    for f in fragments:
        assert f in err, err


def refuses_connections(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except OSError:
        return True


def test_sigterm_finishes_in_flight_requests_and_exits_0(tmp_path):
    entered, release = tmp_path / "entered", tmp_path / "release"
    model = tmp_path / "models" / "slow"
    (model / "1").mkdir(parents=True)
    # The model says when it holds the batch, then holds it until the test lets it go.
    (model / "1" / "model.py").write_text(textwrap.dedent(f"""
        import os, time
        def infer(inputs):
            with open({str(entered)!r}, "a") as f:
                f.write(f"{{len(inputs['x'])}}\\n")
            deadline = time.monotonic() + 120
            while not os.path.exists({str(release)!r}) and time.monotonic() < deadline:
                time.sleep(0.01)
            return {{"y": inputs["x"] + 1}}
    """))
    # The four requests run as one batch: a preferred size of 4, and a delay long enough to gather them.
    (model / "config.yaml").write_text("max_batch_size: 8\ninputs: [{name: x, datatype: INT32, dims: [1]}]\n"
                                       "outputs: [{name: y, datatype: INT32, dims: [1]}]\n"
                                       "dynamic_batching: {max_queue_delay_us: 60000000, preferred_batch_sizes: [4]}\n")
    port = free_port()
    proc = loopserve("serve", "--model-repository", str(tmp_path / "models"), "--port", str(port))
    wait_ready(port, proc)

    results = []

    def call(i):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        body = msgspec.json.encode({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "INT32", "data": [i]}]})
        c.request("POST", "/v2/models/slow/infer", body=body)
        r = c.getresponse()
        results.append((r.status, msgspec.json.decode(r.read())))

    callers = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in callers:
        t.start()
    wait_until(lambda: entered.exists() and entered.read_text() == "4\n", "all four are inside the model")
    proc.send_signal(signal.SIGTERM)
    wait_until(lambda: refuses_connections(port), "the server stops accepting connections")
    assert not results, "answered before the model was let go"
    release.touch()
    for t in callers:
        t.join()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert sorted(r[1]["outputs"][0]["data"][0] for r in results) == [1, 2, 3, 4]
    assert all(status == 200 for status, _ in results)
    # Structured logs: one JSON object per line.
    lines = [msgspec.json.decode(line) for line in err.splitlines() if line.startswith("{")]
    assert any(entry["msg"] == "serving" and entry["port"] == port for entry in lines)
    # And after exit, nothing listens any more.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)


def test_the_hotswap_demo_serves_swaps_and_loses_nothing(tmp_path):
    """The serving-only demo, shortened: build, serve, drive traffic, hot-swap version 2."""
    proc = loopserve("demo", "--hotswap", "--workdir", str(tmp_path / "demo"), "--seconds", "6", "--concurrency", "4",
                     "--port", str(free_port()))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    # Every request the demo's clients sent is accounted for, and none failed.
    counts = re.search(r"([\d,]+) requests sent, ([\d,]+) answered, (\d+) failed .* (\d+) clients crashed", out)
    assert counts, out
    sent, answered, failed, crashed = (int(g.replace(",", "")) for g in counts.groups())
    assert sent > 0 and answered == sent and failed == 0 and crashed == 0, out
    assert "version 1 answered" in out and "version 2 answered" in out, out
    assert "exit code 0" in out


def test_memory_of_large_bodies_goes_back_to_the_system(tmp_path):
    """Three JSON infer bodies of ~48 MB (decoded, then refused: more rows than the model's
    batch) left `loopserve serve` about 50 MB larger for good: glibc kept the freed buffers in its
    heap. Large buffers now come from mmap and the heap is trimmed after large bodies
    (server/heap.py), so the process comes back to within a few MB of where it was."""
    model = tmp_path / "models" / "echo"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text("def infer(inputs):\n    return {'y': inputs['x']}\n")
    (model / "config.yaml").write_text("max_batch_size: 8\ninputs: [{name: x, datatype: FP32, dims: [1]}]\n"
                                       "outputs: [{name: y, datatype: FP32, dims: [1]}]\n")
    port = free_port()
    proc = loopserve("serve", "--model-repository", str(tmp_path / "models"), "--port", str(port), "--workers", "1")
    try:
        wait_ready(port, proc)
        rows = 4_500_000
        big = msgspec.json.encode({"inputs": [{"name": "x", "shape": [rows, 1], "datatype": "FP32",
                                               "data": [0.12345678] * rows}]})
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

        def rss():
            with open(f"/proc/{proc.pid}/status") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

        conn.request("POST", "/v2/models/echo/infer", msgspec.json.encode(
            {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}))
        first = conn.getresponse()
        assert first.status == 200 and first.read()
        before = rss()
        for _ in range(3):
            conn.request("POST", "/v2/models/echo/infer", big)
            response = conn.getresponse()
            assert response.status == 400 and b"max_batch_size" in response.read()
        conn.close()
        wait_until(lambda: rss() - before < 20e6, "the server's RSS came back after 3 bodies of ~48 MB", timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
