"""The engine's native HTTP path (the default at workers 2) with peers that do not keep up, as
processes: a front end stopped (SIGSTOP) or busy holds up no connection handed to the others,
and what no front end takes waits in the engine within bounds (then 503); an answer still going
out to a slow reader at SIGTERM goes out whole, within graceful_shutdown_s; and a client that
takes nothing of its answer for send_timeout_s has its connection closed."""

import http.client
import os
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import msgspec

from conftest import free_port
from test_workers import ADD_ONE, INT_IO, children, infer, serve, until, write_model


def ready(port: int) -> int:
    """GET /v2/health/ready: a route the native path hands to a front end."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        c.request("GET", "/v2/health/ready")
        return c.getresponse().status
    finally:
        c.close()


def handoffs_while_stopped(port: int, stopped: int) -> None:
    """24 handed-off requests at once while front end `stopped` is stopped: the other answers all
    but the few the stopped one may have been given before it was seen not to read (one if it had
    read all it was sent; about four if it was seen reading in the last 50 ms), and those are
    answered once it runs again."""
    answers = []
    callers = [threading.Thread(target=lambda: answers.append(ready(port))) for _ in range(24)]
    os.kill(stopped, signal.SIGSTOP)
    try:
        for t in callers:
            t.start()
        until(lambda: len(answers) >= 18, what="the handed-off requests answered by the running front end")
        assert answers.count(200) == len(answers), answers
    finally:
        os.kill(stopped, signal.SIGCONT)
    for t in callers:
        t.join(timeout=60)
    assert answers == [200] * 24


def test_a_stopped_front_end_holds_up_no_handoff(tmp_path):
    """One front end stopped (SIGSTOP), then the other once the first runs again; then one is
    killed, and with the other stopped its replacement takes the handoffs."""
    repo = write_model(tmp_path / "models", "add", ADD_ONE, "max_batch_size: 8\n" + INT_IO)
    config = tmp_path / "server.yaml"  # what waits in the engine for a replacement to start may wait long
    config.write_text("http: {header_timeout_s: 60}\n")
    port = free_port()
    proc = serve(repo, port, config=config)  # native infer: the default at workers 2
    try:
        first, second = sorted(children(proc.pid))
        handoffs_while_stopped(port, first)
        handoffs_while_stopped(port, second)
        os.kill(first, signal.SIGKILL)
        until(lambda: len(children(proc.pid) - {first}) == 2, what="a new front end")
        handoffs_while_stopped(port, second)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err


def test_connections_no_front_end_takes_are_answered_503_past_the_bound_and_the_wait(tmp_path):
    """Both front ends stopped: each holds the one connection it was given while it looked well
    (it had read all it was sent); the engine keeps max_connections (4) more waiting and answers
    the newest past that 503 at once, then those that waited header_timeout_s; all counted as
    handoff_failed."""
    config = tmp_path / "server.yaml"
    config.write_text("http: {header_timeout_s: 3, max_connections: 4}\n")
    port = free_port()
    proc = serve(write_model(tmp_path / "models", "add", ADD_ONE, "max_batch_size: 8\n" + INT_IO), port, config=config)
    front_ends = sorted(children(proc.pid))
    answers, lock = [], threading.Lock()

    def call():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("GET", "/v2/health/ready")
        r = c.getresponse()
        # 503 from the engine (no front end took it), or from a front end past its own 4 connections
        answer = 200 if r.status == 200 else "engine" if b"front end" in r.read() else r.status
        c.close()
        with lock:
            answers.append(answer)

    callers = [threading.Thread(target=call) for _ in range(16)]
    try:
        try:
            # Not a race: a front end seen reading in the last 50 ms may take a few more than one,
            # and nothing is handed over meanwhile, however slow the machine.
            time.sleep(0.2)
            for pid in front_ends:
                os.kill(pid, signal.SIGSTOP)
            for t in callers:
                t.start()
            until(lambda: len(answers) >= 10, what="the connections past the bound answered")
            with lock:
                at_once, waiting = list(answers), 16 - len(answers)
            assert at_once == ["engine"] * 10 and waiting == 6, (at_once, waiting)  # 2 held, 4 wait
            until(lambda: len(answers) >= 14, what="the waiting connections answered")
            assert answers.count("engine") == 14, answers
        finally:
            for pid in front_ends:
                os.kill(pid, signal.SIGCONT)
        for t in callers:
            t.join(timeout=60)
        refused = answers.count("engine")
        assert sorted(answers, key=str) == [200, 200] + ["engine"] * 14, answers
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as r:
            assert f'connections_total{{outcome="handoff_failed"}} {refused}.0' in r.read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err


# 16 MiB answers: more than the kernel's socket buffers hold, so most waits in the server.
WIDE = 4 << 20
WIDE_MODEL = (f"""
    import numpy as np
    def infer(inputs):
        return {{"y": np.repeat(inputs["x"], {WIDE}, axis=1)}}
""", f"max_batch_size: 4\nfeedback: {{enabled: false}}\ninputs: [{{name: x, datatype: INT32, dims: [1]}}]\n"
     f"outputs: [{{name: y, datatype: INT32, dims: [{WIDE}]}}]\n")


def wide_repository(tmp_path: Path) -> Path:
    write_model(tmp_path / "models", "add", ADD_ONE, "max_batch_size: 8\n" + INT_IO)
    return write_model(tmp_path / "models", "wide", *WIDE_MODEL)


def slow_reader(port: int, value: int, http: bytes = b"HTTP/1.1") -> socket.socket:
    """Asks for a 16 MiB answer (binary) on a connection with a small receive buffer, reads nothing.
    HTTP/1.0 goes to a front end's Python path; 1.1 stays on the native one."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    sock.connect(("127.0.0.1", port))
    body = msgspec.json.encode({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "INT32", "data": [value]}],
                                "outputs": [{"name": "y", "parameters": {"binary_data": True}}]})
    sock.sendall(b"POST /v2/models/wide/infer %s\r\nhost: t\r\ncontent-length: %d\r\n\r\n" % (http, len(body)) + body)
    sock.settimeout(60)
    assert sock.recv(1, socket.MSG_PEEK)  # its answer has begun
    return sock


def read_all(sock: socket.socket) -> tuple[bytes, bytes]:
    """(head, body) of the one answer on `sock`, read until the server closes it."""
    got = bytearray()
    try:
        while data := sock.recv(1 << 20):
            got += data
    except ConnectionResetError:
        pass
    head, _, body = bytes(got).partition(b"\r\n\r\n")
    return head, body


def test_at_sigterm_an_answer_to_a_slow_reader_goes_out_whole_within_the_drain(tmp_path):
    config = tmp_path / "server.yaml"
    config.write_text("http: {graceful_shutdown_s: 3, send_timeout_s: 600}\n")
    port = free_port()
    proc = serve(wide_repository(tmp_path), port, config=config)
    try:
        slow, never = slow_reader(port, 5), slow_reader(port, 6)
        never_python = slow_reader(port, 8, b"HTTP/1.0")  # a front end's drain waits for it too
        proc.send_signal(signal.SIGTERM)
        stop_began = time.monotonic()

        def refused():  # the native loop drains: it has closed its listener
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                return False
            except ConnectionRefusedError:
                return True

        until(refused, what="the native loop to stop accepting")
        head, body = read_all(slow)  # read only now, while the server stops
        assert head.startswith(b"HTTP/1.1 200 "), head  # answered before the stop: no `connection: close`
        length = int(dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])[b"content-length"])
        assert len(body) == length and body.endswith((5).to_bytes(4, "little") * 1024), (len(body), length)
        # The drain ends at graceful_shutdown_s (3 s), not at send_timeout_s (600): the
        # client that never reads has its answer cut there, and the server exits.
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        # The native loop and the front ends drain side by side: one stop, not two in a row
        # (which takes two drains of 3 s at least).
        assert time.monotonic() - stop_began < 2 * 3, time.monotonic() - stop_began
        head, body = read_all(never)
        assert len(body) < WIDE * 4, len(body)
        head, body = read_all(never_python)
        assert head.startswith(b"HTTP/1.1 200 ") and len(body) < WIDE * 4, (head, len(body))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_a_client_that_never_reads_is_closed_after_send_timeout_s(tmp_path):
    config = tmp_path / "server.yaml"
    config.write_text("http: {send_timeout_s: 1}\n")
    port = free_port()
    proc = serve(wide_repository(tmp_path), port, config=config)
    try:
        never = slow_reader(port, 7)

        def timeouts():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as r:
                text = r.read().decode()
            return float(text.split('loopserve_native_http_connections_total{outcome="send_timeout"} ')[1].split()[0])

        until(lambda: timeouts() >= 1, what="the connection closed and counted")
        head, body = read_all(never)  # what the kernel held, then the close
        assert head.startswith(b"HTTP/1.1 200 ") and len(body) < WIDE * 4
        assert infer(port, "add", 1)[0] == 200  # everyone else is served
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of `pid`, from /proc."""
    out, hz = {}, os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[task.name] = (int(fields[11]) + int(fields[12])) / hz
    return out


def test_at_sigterm_the_engine_waits_for_a_request_in_flight_without_spinning(tmp_path):
    """The drain waits for a request still in the model: it is answered, and meanwhile no engine
    thread runs (the loop's wake-up used to stay readable through the drain: a core spun)."""
    marker = tmp_path / "inside"
    repo = write_model(tmp_path / "models", "slow", f"""
        import time
        def infer(inputs):
            open({str(marker)!r}, "w").write("in")
            time.sleep(2.0)
            return {{"y": inputs["x"] + 1}}
    """, "max_batch_size: 8\n" + INT_IO)
    config = tmp_path / "server.yaml"
    config.write_text("http: {graceful_shutdown_s: 30}\n")
    port = free_port()
    proc = serve(repo, port, config=config)
    try:
        answer = []
        caller = threading.Thread(target=lambda: answer.append(infer(port, "slow", 1)))
        caller.start()
        until(marker.exists, what="the request inside the model")
        before, began = thread_cpu_s(proc.pid), time.monotonic()
        proc.send_signal(signal.SIGTERM)
        after = before
        while caller.is_alive():
            after = thread_cpu_s(proc.pid) or after
            time.sleep(0.05)
        waited = time.monotonic() - began
        assert answer and answer[0][0] == 200, answer
        busiest = max(after.get(t, cpu) - cpu for t, cpu in before.items())
        # A spinning thread takes what a core gives it: about `waited`, here over a second.
        assert waited > 0.5 and busiest < 0.5 * waited, (busiest, waited)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
