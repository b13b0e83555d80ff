"""What a benchmark in bench/ reports beside its figures: the machine, the source tree,
and the CPU use of this process's threads and of other processes during a window.

The machines are shared and small (2 cores): another process on the other core, or the event
loop competing with the model, shows up here rather than as an unexplained ratio.
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def source_digest() -> str:
    """A short sha256 of the package's sources (csrc/, python/loopserve/, kernels/): results belong to
    a tree, and the tree may be uncommitted."""
    h = hashlib.sha256()
    for folder in ("csrc", "python/loopserve", "kernels"):
        for f in sorted((ROOT / folder).rglob("*")):
            if f.is_file() and f.suffix in {".cpp", ".h", ".py"}:
                h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(**versions: str) -> dict:
    """The CPU, cores, Python and the given library versions, and the source digest."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        **versions,
        "source_digest": source_digest(),
    }


@dataclass
class Usage:
    """CPU use during one window (Linux /proc; zeros elsewhere)."""

    others_cores: float = 0.0  # other processes on this machine, in cores
    loop_cpu: float = 0.0  # the main (event loop) thread: share of the window on a CPU
    worker_cpu: float = 0.0  # the busiest other thread (the batcher's worker when served)
    worker_waiting_for_cpu: float = 0.0  # its share of the window runnable but not running


def _cpu_counters() -> tuple[float, float, dict[int, tuple[int, int]]]:
    """(machine busy seconds, this process's CPU seconds, {tid: (run ns, runqueue ns)})."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = (sum(fields) - fields[3] - fields[4] - fields[7]) / os.sysconf("SC_CLK_TCK")  # not idle, iowait, steal
    t = os.times()
    threads = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            run, wait, _ = (int(v) for v in Path(f"/proc/self/task/{tid}/schedstat").read_text().split())
        except (OSError, ValueError):
            continue
        threads[int(tid)] = (run, wait)
    return busy, t.user + t.system, threads


class UsageMeter:
    """with UsageMeter() as m: ...; then m.usage."""

    def __enter__(self) -> "UsageMeter":
        self.usage = Usage()
        try:
            self._start = _cpu_counters()
        except OSError:
            self._start = None
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self._start is None:
            return
        wall = time.perf_counter() - self._t0
        busy1, own1, threads1 = _cpu_counters()
        busy0, own0, threads0 = self._start
        shares = {tid: ((run - threads0[tid][0]) / 1e9 / wall, (wait - threads0[tid][1]) / 1e9 / wall)
                  for tid, (run, wait) in threads1.items() if tid in threads0}
        main = shares.pop(os.getpid(), (0.0, 0.0))
        worker = max(shares.values(), default=(0.0, 0.0))
        self.usage = Usage(max(0.0, (busy1 - busy0 - (own1 - own0)) / wall), main[0], *worker)
