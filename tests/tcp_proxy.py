"""A loopback TCP proxy in front of a real server that can reset a live connection on demand:
the fault a zero-loss check must see (a test of the tests)."""

from __future__ import annotations

import selectors
import socket
import struct
import threading


class DroppingProxy:
    """Forwards every connection to 127.0.0.1:`upstream_port`; drop_one() resets one that has
    carried traffic. Everything runs on one selector thread; stop() ends it."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.dropped = 0
        self._peers: dict[socket.socket, socket.socket] = {}
        self._clients: set[socket.socket] = set()
        self._carried: set[socket.socket] = set()  # client sockets that have sent a request
        self._drop_wanted = threading.Event()
        self._drop_done = threading.Event()
        self._stop = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="dropping-proxy", daemon=True)
        self._thread.start()

    def drop_one(self, timeout: float = 30.0) -> None:
        """Resets (RST) one client connection that has carried traffic; returns once done."""
        self._drop_done.clear()
        self._drop_wanted.set()
        assert self._drop_done.wait(timeout), "no connection to drop"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for sock in list(self._peers):
            sock.close()
        self.listener.close()
        self._selector.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.02):
                sock = key.fileobj
                if sock is self.listener:
                    self._accept()
                elif sock in self._peers:
                    self._forward(sock)
            if self._drop_wanted.is_set() and self._carried:
                self._reset(next(iter(self._carried)))
                self._drop_wanted.clear()
                self.dropped += 1
                self._drop_done.set()

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._selector.register(s, selectors.EVENT_READ)
        self._peers[client], self._peers[upstream] = upstream, client
        self._clients.add(client)

    def _forward(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._close_pair(sock)
            return
        peer = self._peers[sock]
        if sock in self._clients:
            self._carried.add(sock)  # it sent a request
        try:
            peer.sendall(data)
        except OSError:
            self._close_pair(sock)

    def _reset(self, client: socket.socket) -> None:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
        self._close_pair(client)

    def _close_pair(self, sock: socket.socket) -> None:
        peer = self._peers.pop(sock, None)
        for s in (sock, peer):
            if s is None:
                continue
            self._peers.pop(s, None)
            self._clients.discard(s)
            self._carried.discard(s)
            try:
                self._selector.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
