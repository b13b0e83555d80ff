"""bench/gpu_session.py, the one device call for the GPU figures: a step past its cap is stopped
with every process it started and the next step still runs; the table states each figure against
its target; and the tests step runs end to end here (its GPU tests skip), writing the table to
the output folder within what a device call brings back. The whole dry run (`bash
bench/gpu_session.sh --cpu`, every step on the CPU, about 4 minutes) is too long for the suite."""

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import gpu_summary  # noqa: E402


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_step_past_its_cap_is_stopped_with_everything_it_started(tmp_path):
    """In a process of its own, as the session runs (it becomes the subreaper of its steps)."""
    pids = tmp_path / "pids"
    hang = ("sleep 300 & echo $! >> {p}; (setsid sleep 301 & echo $! >> {p}); echo started; wait").format(p=pids)
    leave = "setsid sleep 302 & echo $! >> {p}; echo leaving".format(p=pids)
    driver = f"""
import json, os, sys
from pathlib import Path
sys.path.insert(0, {str(BENCH)!r})
import gpu_session as g
g.become_subreaper()
work = Path({str(tmp_path)!r})
log = g.Sink(work / "session.log", echo=False)
steps = [g.Step("hang", 3, ["bash", "-c", {hang!r}]), g.Step("leave", 60, ["bash", "-c", {leave!r}]),
         g.Step("late", 60, ["bash", "-c", "echo never"])]
records = [g.run_step(s, dict(os.environ), t, log, work) for s, t in zip(steps, (60, 60, 10))]
print(json.dumps(records))
"""
    proc = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    hung, left, late = json.loads(proc.stdout.strip().splitlines()[-1])
    assert hung["status"].startswith("stopped at its cap") and hung["seconds"] < 30
    assert left["status"] == "ok" and left["left_running"] == 1  # a "server" it did not stop
    assert late["status"].startswith("skipped")  # 10 s left: less than a step is started with
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 3 and not any(running(p) for p in started)
    assert "started" in (tmp_path / "hang.log").read_text()
    assert "leaving" in (tmp_path / "session.log").read_text()


def write_results(work: Path) -> None:
    """Results in the formats the steps write (bench/drift_gpu.py, gpu_batcher.py, workers_scaling.py,
    serving.py, the aot report, pytest's JUnit XML)."""
    path = {"us": 10.0, "of_copy_bw": 0.62}
    (work / "drift.json").write_text(json.dumps({"machine": {"gpu": "H200"}, "copy_gbps": 4186.0, "cases": [
        {"rows": 200_000, "equal": True, "mismatch": [], "paths": {
            "kernel, graph": path, "kernel, eager": dict(path, of_copy_bw=0.3),
            "torch native (bucketize + bincount), eager": {"us": 33.0, "of_copy_bw": 0.2}}}]}))
    serving = [dict(model="wide", instances=i, clients=c, served=s, direct=200_000.0)
               for i, c, s in ((1, 256, 100_000.0), (1, 1024, 100_000.0), (2, 256, 140_000.0), (2, 1024, 110_000.0))]
    (work / "batcher.json").write_text(json.dumps({"serving": serving, "monitoring_on_off": 0.981,
                                                   "monitoring_rounds": [{}] * 3, "monitor_path": "kernels",
                                                   "monitor_stats": {"rows_seen": 9_000, "rows_skipped": 256}}))
    rows = [dict(model="heavy", workers=w, body="binary", c=64, req_s=r, p50_ms=1.0, p99_ms=3.0, errors=0)
            for w, r in ((1, 7_400.0), (8, 30_000.0))]
    (work / "serving.json").write_text(json.dumps({"machine": {}, "rows": rows}))
    heavy = [dict(concurrency=c, body=b, ratio=x, mean_batch=63.4, served_batch_ms=2.8, direct_batch_ms=2.7)
             for c, b, x in ((64, "binary", 0.88), (64, "json", 0.80), (128, "binary", 0.84))]
    (work / "heavy.json").write_text(json.dumps({"heavy": {"summary": heavy}}))
    (work / "compile.log").write_text(
        "sm_90 fused-f32 (triton 3.6.0): compiled; 0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads; "
        "Used 168 registers, used 1 barriers\n"
        "sm_90 fused-f64 (triton 3.6.0): compiled; 8 bytes stack frame, 16 bytes spill stores, 16 bytes spill loads; "
        "Used 255 registers, used 1 barriers\n")
    (work / "tests.xml").write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="0">'
        '<testcase name="test_a"/><testcase name="test_b"><failure message="x"/></testcase><testcase name="test_c"/>'
        "</testsuite></testsuites>")


def test_the_table_states_each_figure_against_its_target(tmp_path):
    write_results(tmp_path)
    steps = [{"name": n, "status": "ok", "seconds": 41.0, "cap_s": 120}
             for n in ("tests", "drift", "batcher", "compile", "serving", "heavy")]
    summary = gpu_summary.summarize(tmp_path, steps, "gpu", 480, "now")
    met = {f["figure"]: f["met"] for f in summary["figures"]}
    assert met["kernel, graph: GB/s ÷ copy GB/s, 200,000 rows"] is True  # 0.62 >= 0.50
    assert met["kernel, eager: GB/s ÷ copy GB/s, 200,000 rows"] is None  # shown, not the target
    assert met["instances 2 ÷ 1, wide MLP, c=256"] is True and met["instances 2 ÷ 1, wide MLP, c=1024"] is False
    assert met["monitoring on ÷ off, wide, 2 instances, c=1024 (median of 3)"] is True
    assert met["the monitor's path for a torch model"] is True
    assert met["monitor rows seen / skipped (queue full)"] is False  # the monitor fell behind
    assert met["sm_90 variants with spills, triton 3.6.0"] is False
    assert met["workers 8 ÷ 1, heavy MLP, binary, c=64"] is False  # 4.05 < 5
    assert met["served ÷ direct rows/s, c=64, binary"] is True  # 0.88 >= 0.85
    assert met["served ÷ direct rows/s, c=64, json"] is None  # the target is the binary form's
    assert met["served ÷ direct rows/s, c=128, binary"] is False
    assert met["tests/gpu"] is False and "  test_b: failure" in met
    gpu_summary.write(tmp_path, summary)
    md = (tmp_path / "summary.md").read_text()
    assert "| drift (13) | kernel speed ÷ torch native, 200,000 rows | 3.3× |" in md
    assert "| heavy CPU MLP (11) |   mean batch; model ms per full batch, served / direct, c=64, binary | 63.4; 2.80 / 2.70 |" in md
    assert "fused-f64 (16 B)" in md and "| heavy | binary | 64 | 8 | 30,000 |" in md
    assert json.loads((tmp_path / "summary.json").read_text())["raw"]["batcher"]["monitoring_on_off"] == 0.981
    # a rerun of one step states that step's figures alone, not results an earlier run left behind
    rerun = gpu_summary.summarize(tmp_path, [dict(steps[0], name="serving")], "gpu", 200, "later")
    assert {f["group"] for f in rerun["figures"]} == {"workers (11)"}


def test_the_tests_step_runs_end_to_end_and_writes_the_table(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    argv = [sys.executable, str(BENCH / "gpu_session.py"), "--cpu", "--steps", "tests", "--no-setup",
            "--python", sys.executable, "--out", str(out), "--work", str(work)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["ok"]
    tests = next(f for f in summary["figures"] if f["figure"] == "tests/gpu")
    assert tests["met"] is True and "skipped" in tests["shown"]  # no CUDA here: each one says so
    assert "no CUDA device" in (out / "session.log").read_text()
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and "| tests | tests/gpu |" in (out / "summary.md").read_text()
