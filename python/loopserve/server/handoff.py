"""Connections the engine's native HTTP server hands over (http.native_infer).

With `native_infer` on, the engine's native core owns the public port and answers the common
infer request itself (csrc/http/). Every other request, and any connection it does not read a
whole request from quickly, comes here: its descriptor arrives over a Unix socket
(SCM_RIGHTS) with the bytes already read from it, and this process adopts it into uvicorn as
if it had accepted it, then feeds it those bytes. From then on the connection is this
process's: every route, limit (server/limits.py) and error message applies as always.

Frame: b"LSH1", a 4-byte little-endian length, then that many bytes; the descriptor comes
with the frame's first byte (csrc/http/handoff.h).

Thread-safety: the event loop's thread.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import struct

log = logging.getLogger("loopserve.handoff")

_HEAD = struct.Struct("<4sI")
_MAGIC = b"LSH1"


class HandoffReceiver:
    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, protocol_factory):
        self.loop = loop
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(False)
        self.protocol_factory = protocol_factory
        self.buffer = bytearray()
        self.fds: collections.deque[int] = collections.deque()
        self.adopted = 0
        self._tasks: set[asyncio.Task] = set()
        loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        while self.fds:
            socket.close(self.fds.popleft())

    def _readable(self) -> None:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 18, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            if not data and not fds:  # the engine is gone (its lifeline says so too)
                self.close()
                return
            self.buffer += data
            self.fds.extend(fds)
            self._frames()

    def _frames(self) -> None:
        while len(self.buffer) >= _HEAD.size:
            magic, length = _HEAD.unpack_from(self.buffer)
            if magic != _MAGIC:  # cannot happen but by a bug: the stream is lost
                log.error("handoff stream out of step; closing it")
                self.close()
                return
            if len(self.buffer) < _HEAD.size + length or not self.fds:
                return
            prefix = bytes(self.buffer[_HEAD.size:_HEAD.size + length])
            del self.buffer[:_HEAD.size + length]
            self._adopt(self.fds.popleft(), prefix)

    def _adopt(self, fd: int, prefix: bytes) -> None:
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            socket.close(fd)
            return
        sock.setblocking(False)
        make = self.protocol_factory

        def factory():
            protocol = make()
            made = protocol.connection_made

            def connection_made(transport):
                made(transport)
                # What the engine read, before anything the transport reads itself.
                if prefix and not transport.is_closing():
                    protocol.data_received(prefix)

            protocol.connection_made = connection_made
            return protocol

        self.adopted += 1
        task = self.loop.create_task(self._connect(factory, sock))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, factory, sock) -> None:
        try:
            await self.loop.connect_accepted_socket(factory, sock)
        except OSError:  # the client left meanwhile
            sock.close()
