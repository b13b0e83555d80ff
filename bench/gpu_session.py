"""One device call for the GPU figures of issues 13 and 11: build on the GPU host from the working
tree and what `.gpu/` carries (bench/gpu_prepare.sh fills it here), run tests/gpu/, then the
issue-13 benchmarks, then issue 11's workers sweep, each step under its own time cap inside one
overall budget, and write one table to $OUT.

Steps, most important figures first (a step that would not fit the time left is skipped, said so):
  setup    wheels, wrk, `pip install --target` build, import check     (bench/gpu_setup.sh)
  tests    tests/gpu/ on the device (compiled kernels, streams, graphs, the monitor's kernel path)
  drift    drift kernel GB/s ÷ copy GB/s, 200k and 2M rows              (bench/drift_gpu.py)
  batcher  instances 2 ÷ 1, served ÷ direct, monitoring on ÷ off        (bench/gpu_batcher.py)
  compile  sm_90 registers and spills per kernel variant, this triton   (loopserve.kernels.aot)
  serving  workers 1, 2, 4, 8: req/s, p50, p99, ÷ workers=1             (bench/workers_scaling.py)
  heavy    CPU heavy MLP over HTTP ÷ called directly, c=64 and 128       (bench/serving.py)
  sweep    drift kernel tile × warps × maxnreg                          (bench/drift_gpu.py)

A step past its cap is stopped with every process it started (servers and their front ends
too: this process is their subreaper), and the next step runs. The summary is rewritten after
every step, so a call stopped from outside still returns what was measured. $OUT receives
summary.md, summary.json (the figures, each step's status, the raw results) and session.log
(every step's output), well inside the 8 files a call brings back.

    bash bench/gpu_session.sh                      # the GPU host (README.md: the exact `run` call)
    bash bench/gpu_session.sh --cpu                # here: every step on the CPU, tiny sizes (~4 min)
    bash bench/gpu_session.sh --steps serving --budget 200   # a rerun of one step on a warm machine
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_summary  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SUMMARY_RESERVE_S = 5  # kept back from the budget for the last summary
MIN_STEP_S = 15  # a step with less time than this left is skipped rather than started


@dataclass
class Step:
    name: str
    cap_s: float
    argv: list[str]
    result: str | None = None  # the file (in the work folder) the step writes its results to


def plan(mode: str, py: str, work: Path, carry: str) -> list[Step]:
    """The steps in order, with their caps (seconds) on the GPU host and in the CPU dry run."""
    cpu = mode == "cpu"
    site, deps, debs = work / "site", work / "deps", work / "debs"
    build_dir = str(REPO / "build" / "gpu-session-check") if cpu else str(work / "build")
    drift = [py, "bench/drift_gpu.py", "--no-compile-report"] + (["--cpu"] if cpu else [])
    return [
        Step("setup", 600 if cpu else 150,
             ["bash", "bench/gpu_setup.sh", mode, py, carry, str(site), str(deps), str(debs), build_dir]),
        Step("tests", 100, [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "tests/gpu",
                            "--junitxml", str(work / "tests.xml")], "tests.xml"),
        Step("drift", 120, drift + ["--no-sweep", "--json", str(work / "drift.json")], "drift.json"),
        Step("batcher", 120, [py, "bench/gpu_batcher.py", "--rounds", "3", "--json", str(work / "batcher.json")]
             + (["--cpu"] if cpu else ["--seconds", "3"]), "batcher.json"),
        Step("compile", 90, [py, "-m", "loopserve.kernels.aot", "90"], "compile.log"),
        Step("serving", 180, [py, "bench/workers_scaling.py", "--json", str(work / "serving.json")]
             + (["--cpu", "--workers", "1,2", "--concurrency", "16", "--seconds", "1"] if cpu
                else ["--seconds", "3", "--wrk-threads", "4"]), "serving.json"),
        # Issue 11's last figure: the CPU heavy MLP (1 thread) at 64 closed-loop clients, which the
        # 2-core box caps (wrk and the loop share the model's cores); a 16-core host does not.
        Step("heavy", 75, [py, "bench/serving.py", "--servers", "none", "--no-ab", "--quick", "--heavy-rounds",
                           "1" if cpu else "2", "--duration", "1" if cpu else "3", "--json", str(work / "heavy.json")],
             "heavy.json"),
        Step("sweep", 90, drift + ["--sweep-only", "--json", str(work / "sweep.json")], "sweep.json"),
    ]


def step_env(mode: str, work: Path, built: bool) -> dict:
    """What every step after setup sees: the build and the carried packages first on the path,
    the unpacked wrk, and the compiled kernels (the CPU dry run's drift step interprets its own)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    paths = [str(work / "site")] if built else []
    if built and mode == "cpu":  # gpu_setup.sh's shim: the build, not the dev venv's editable loopserve
        paths.append(str(work / "site.shim"))
    if mode == "gpu":
        paths.append(str(work / "deps"))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = ":".join(paths)
    debs = work / "debs"
    env["PATH"] = f"{debs / 'usr' / 'bin'}:{env.get('PATH', '')}"
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (str(debs / "usr/lib/x86_64-linux-gnu"),
                                                  env.get("LD_LIBRARY_PATH")) if p)
    return env


# -- processes ---------------------------------------------------------------------------------


def become_subreaper() -> None:
    """Orphans of a step (a server whose bench script died) are re-parented to this process, so
    they stay in its tree and are stopped with the step."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def descendants(root: int) -> list[int]:
    """Every live process below `root`, from /proc (parents before children)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def stop_tree(pids: list[int], grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL whatever still runs after `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while sig == signal.SIGTERM and time.monotonic() < deadline:
            reap(pids)
            if not any(alive(p) for p in pids):
                return
            time.sleep(0.1)
    reap(pids)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def reap(pids: list[int]) -> None:
    """Collect those of `pids` that exited and are this process's children (re-parented orphans
    included), so they do not linger as zombies."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


class Sink:
    """A log file, flushed line by line, optionally echoed to stdout. Thread-safe."""

    def __init__(self, path: Path, echo: bool):
        self.file, self.echo, self.lock = open(path, "w"), echo, threading.Lock()

    def write(self, text: str) -> None:
        with self.lock:
            self.file.write(text)
            self.file.flush()
            if self.echo:
                sys.stdout.write(text)
                sys.stdout.flush()

    def close(self) -> None:
        self.file.close()


def run_step(step: Step, env: dict, time_left: float, log: Sink, work: Path) -> dict:
    """Runs one step under min(its cap, the time left); its output goes to `log` and to
    work/<name>.log. Returns its record for the summary."""
    record = {"name": step.name, "cap_s": step.cap_s, "seconds": 0.0, "rc": None}
    cap = min(step.cap_s, time_left)
    if time_left < MIN_STEP_S:
        record["status"] = f"skipped: {max(time_left, 0):.0f} s of the budget left"
        log.write(f"\n== {step.name}: {record['status']}\n")
        return record
    log.write(f"\n== {step.name} (cap {cap:.0f} s): {' '.join(step.argv)}\n")
    start = time.monotonic()
    before = set(descendants(os.getpid()))
    proc = subprocess.Popen(step.argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    own = Sink(work / f"{step.name}.log", echo=False)
    try:
        pump = threading.Thread(target=copy_lines, args=(proc.stdout, (log, own)), daemon=True)
        pump.start()
        try:
            record["rc"] = proc.wait(timeout=cap)
            record["status"] = "ok" if record["rc"] == 0 else f"failed (exit {record['rc']})"
        except subprocess.TimeoutExpired:
            stop_tree([proc.pid] + descendants(proc.pid))
            record["rc"] = proc.wait()
            record["status"] = f"stopped at its cap ({cap:.0f} s)"
        left = [p for p in descendants(os.getpid()) if p not in before]  # e.g. a server it did not stop
        if left:
            stop_tree(left)
            record["left_running"] = len(left)
        pump.join(timeout=10)
    finally:
        own.close()
    record["seconds"] = round(time.monotonic() - start, 1)
    log.write(f"== {step.name}: {record['status']} in {record['seconds']:.0f} s\n")
    return record


def copy_lines(stream, sinks) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        for sink in sinks:
            sink.write(line)


# -- the session -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--cpu", action="store_true", help="dry run here: every step on the CPU, tiny sizes")
    p.add_argument("--steps", help="comma-separated subset, run in the usual order (default: all); setup always "
                   "runs first, and skips the build when the sources are unchanged")
    p.add_argument("--no-setup", action="store_true",
                   help="skip setup: the steps import the loopserve this Python has (the dev venv here)")
    p.add_argument("--budget", type=float, help="seconds for the whole session (default 480 on the GPU, 900 --cpu)")
    p.add_argument("--out", type=Path, help="where the table and log go (default $OUT, else /tmp/gpu-session-out)")
    p.add_argument("--work", type=Path, help="build and intermediate results (default /tmp/gpu-session)")
    p.add_argument("--carry", default=".gpu", help="the carried wheels and .debs (bench/gpu_prepare.sh)")
    p.add_argument("--python", help="the Python the steps run (default: this one; --cpu: .venv/bin/python)")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    mode = "cpu" if args.cpu else "gpu"
    budget = args.budget or (900 if args.cpu else 480)
    out = args.out or Path(os.environ.get("OUT") or "/tmp/gpu-session-out")
    work = args.work or Path("/tmp/gpu-session")
    py = args.python or (str(REPO / ".venv" / "bin" / "python") if args.cpu else sys.executable)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    steps = plan(mode, py, work, args.carry)
    if args.steps:
        wanted = set(args.steps.split(",")) | {"setup"}
        unknown = wanted - {s.name for s in steps}
        if unknown:
            p.error(f"unknown steps {sorted(unknown)}; the steps are {[s.name for s in steps]}")
        steps = [s for s in steps if s.name in wanted]
    if args.no_setup:
        steps = [s for s in steps if s.name != "setup"]
    for s in steps:  # a result left by an earlier run must not pass for this one's
        if s.result:
            (work / s.result).unlink(missing_ok=True)
    become_subreaper()
    records: list[dict] = []
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    log = Sink(out / "session.log", echo=True)
    try:
        log.write(f"gpu_session: {mode}, budget {budget:.0f} s, steps {[s.name for s in steps]}, {started}\n")
        for step in steps:
            built = not args.no_setup and (work / "site" / ".source-digest").exists()
            env = step_env(mode, work, built)
            time_left = budget - (time.monotonic() - t0) - SUMMARY_RESERVE_S
            records.append(run_step(step, env, time_left, log, work))
            if step.name == "setup" and records[-1]["status"] != "ok":
                log.write("setup failed: the other steps need the build; stopping here\n")
                break
            gpu_summary.write(out, gpu_summary.summarize(work, records, mode, budget, started))
        summary = gpu_summary.summarize(work, records, mode, budget, started)
        summary["seconds"] = round(time.monotonic() - t0, 1)
        gpu_summary.write(out, summary)
    finally:
        log.close()
    print("\n" + (out / "summary.md").read_text())
    return 0 if all(r["status"] == "ok" for r in records) and len(records) == len(steps) else 1


if __name__ == "__main__":
    sys.exit(main())
