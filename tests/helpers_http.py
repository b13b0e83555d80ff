"""Raw HTTP/1.1 exchanges with a server on a loopback port, for the tests that compare the
engine's native infer path with the Python one on the same server (test_native_http.py,
test_native_differential.py): HTTP/1.1 reaches the native path, the same bytes as HTTP/1.0 the
Python front end (the native path leaves HTTP/1.0 to it)."""

from __future__ import annotations

import socket


class Answers:
    """Reads answers one after another from one connection (one buffered reader for all, so
    that pipelined answers read ahead are not lost); each has a Content-Length."""

    def __init__(self, sock: socket.socket):
        self.file = sock.makefile("rb")

    def next(self) -> tuple[int, dict, bytes]:
        status_line = self.file.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection without an answer")
        headers = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers, self.file.read(int(headers["content-length"]))


def exchange(port: int, raw: bytes, answers: int = 1) -> list[tuple[int, dict, bytes]]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(raw)
        reader = Answers(sock)
        return [reader.next() for _ in range(answers)]


def as_http10(raw: bytes) -> bytes:
    """The same request as HTTP/1.0 (the request line is the first line with the version)."""
    return raw.replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1)


def native_and_python(port: int, raw: bytes) -> tuple[tuple[int, dict, bytes], tuple[int, dict, bytes]]:
    """(native answer, Python answer) of one HTTP/1.1 request: as sent, then as HTTP/1.0."""
    return exchange(port, raw)[0], exchange(port, as_http10(raw))[0]
