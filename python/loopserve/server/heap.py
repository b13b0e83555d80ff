"""Memory a large body leaves behind goes back to the system.

glibc keeps what Python frees in its heap for reuse, and raises its mmap threshold after every
large free, so after a few 64 MiB bodies a server process stayed 100-250 MB larger for good
(bench/attacks.py) while Python itself held 4-5 MB (tracemalloc). Two measures, glibc only (a
no-op elsewhere): buffers of 1 MiB or more always come from mmap, returned to the system when
freed (a fixed M_MMAP_THRESHOLD also stops the dynamic raise); and a second after a large body
has been dealt with, malloc_trim hands the heap's free pages back (the many small objects a big
JSON body decodes into). Thread-safety: trim_soon on the event loop's thread; the trim runs on a
worker.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_FROM_BYTES = 1 << 20
TRIM_AFTER_S = 1.0


def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _glibc()
_trim_at: asyncio.TimerHandle | None = None


def large_buffers_from_mmap() -> None:
    """At a server process's start: buffers of MMAP_FROM_BYTES or more are mmapped."""
    if _LIBC is not None:
        _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_FROM_BYTES)


def trim_soon() -> None:
    """When a large body arrives and when it has been dealt with: the heap is trimmed
    TRIM_AFTER_S after the last such call (a trim in the middle of a long decode would give back
    little)."""
    global _trim_at
    if _LIBC is None:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not on an event loop (the in-process API): nothing to schedule on
        return
    if _trim_at is not None:
        _trim_at.cancel()
    _trim_at = loop.call_later(TRIM_AFTER_S, _trim, loop)


def _trim(loop: asyncio.AbstractEventLoop) -> None:
    global _trim_at
    _trim_at = None
    loop.run_in_executor(None, _LIBC.malloc_trim, 0)
