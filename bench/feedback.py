"""Feedback's cost on the infer hot path: recording every prediction by request id.

Two measurements:

  record   in-process: what the infer route adds per request (store.track(model), a generated
           id, track.record(...)) for the tiny MLP (32 -> 64 -> 2, ONNX) at batch 1, timed over
           N calls in steady state (the record full, so every insert also evicts the oldest
           entry and writes its tombstone); and the join of one label (feedback route's work).
  wrk A/B  two loopserve servers at once on the same model, feedback on (the default config)
           and off (`feedback: {enabled: false}`); wrk windows alternate on, off, on, off...
           (JSON body, no request id, so the "on" server also makes and returns an id) at each
           concurrency. Reported: the median over rounds of req/s on / req/s off, and p50/p99.

  record A/B  PredictionRecord.add of this tree against the one at a git revision (`--against REV`,
           its predictions.py loaded from git), alternating in one run: the ratio of the two costs
           per request (the record full, as above). With --record-only, nothing else runs.

    .venv/bin/python bench/feedback.py [--quick] [--rounds N] [--window S] [--concurrency 1,64] [--json out.json]
    .venv/bin/python bench/feedback.py --against main --record-only
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runinfo  # noqa: E402
import serving  # noqa: E402  (bench/ is not a package)


def record_cost(calls: int) -> dict:
    import numpy as np

    from loopserve import Model, zoo
    from loopserve.monitor.feedback import FeedbackStore

    with tempfile.TemporaryDirectory() as work:
        zoo.write_model_dir(work, "mlp", zoo.tiny_mlp(), extra_config="threads: 1\n")
        model = Model.load(Path(work) / "mlp")
        try:
            store = FeedbackStore()
            x = {zoo.INPUT: np.asarray([serving.infer_row()], np.float32)}
            outputs = model.infer_sync(x)
            track = store.track(model)
            record_size = model.config.feedback.record_size
            for _ in range(record_size + 1000):  # fill the record: from here every insert evicts
                track.record(store.new_id(), x, outputs, None)

            def timed(params):
                start = time.perf_counter()
                for _ in range(calls):
                    t = store.track(model)
                    t.record(store.new_id(), x, outputs, params)
                return (time.perf_counter() - start) / calls * 1e6

            def empty_loop():
                start = time.perf_counter()
                for _ in range(calls):
                    pass
                return (time.perf_counter() - start) / calls * 1e6

            no_group = statistics.median(timed(None) for _ in range(3))
            group = statistics.median(timed({"group": "A"}) for _ in range(3))
            loop = empty_loop()
            ids = list(track.rec.index)[-10_000:]
            start = time.perf_counter()
            store.feedback(model.name, [(i, 1) for i in ids])
            join_us = (time.perf_counter() - start) / len(ids) * 1e6
            rec = track.rec
            return {"record_us": round(no_group - loop, 3), "record_with_group_us": round(group - loop, 3),
                    "join_per_label_us": round(join_us, 3), "record_rows": rec.capacity, "entries": rec.live_entries(),
                    "ids_held": len(rec) + len(rec.tombstones), "calls": calls}
        finally:
            model.close()


def record_ab(rev: str, calls: int, rounds: int = 7) -> dict:
    """µs per PredictionRecord.add here and at `rev`, timed alternately; the ratio of the medians."""
    import importlib.util
    import subprocess

    import numpy as np

    from loopserve.monitor.feedback import FeedbackStore
    from loopserve.monitor.predictions import PredictionRecord

    source = subprocess.run(["git", "show", f"{rev}:python/loopserve/monitor/predictions.py"], check=True,
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictions_at_rev.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("predictions_at_rev", path)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
    capacity = 100_000
    y = np.zeros((1, 2), np.float32)
    inputs = {"x": np.zeros((1, 32), np.float32)}
    records = {"here": PredictionRecord(capacity, 3600, 2, [("x", 0, 32)]),
               rev: old.PredictionRecord(capacity, 3600, 2, [("x", 0, 32)])}
    ids = [FeedbackStore.new_id() for _ in range(calls)]
    for rec in records.values():  # full: every insert evicts, and generations turn over
        for i in range(capacity + 1000):
            rec.add(f"fill-{i}", float(i), y, inputs, None)
    times: dict[str, list[float]] = {name: [] for name in records}
    for r in range(rounds):
        for name in (list(records) if r % 2 == 0 else list(records)[::-1]):
            add = records[name].add
            start = time.perf_counter()
            for i, request_id in enumerate(ids):
                add(request_id, 1e6 + i, y, inputs, None)
            times[name].append((time.perf_counter() - start) / calls * 1e6)
    here, before = statistics.median(times["here"]), statistics.median(times[rev])
    return {"against": rev, "here_us": round(here, 3), "rev_us": round(before, 3), "ratio": round(here / before, 3),
            "calls": calls, "rounds": rounds}


def ab(args, work: Path) -> list[dict]:
    from loopserve import zoo

    servers = []
    for name, extra in (("on", ""), ("off", "feedback: {enabled: false}\n")):
        repo = work / f"models-{name}"
        zoo.write_model_dir(repo, serving.MODEL, zoo.tiny_mlp(), fmt="onnx", max_batch_size=64,
                            max_queue_delay_us=500, extra_config="threads: 1\n" + extra)
        port = serving.free_port()
        line = serving.DEFAULT_LOOPSERVE_CMD.format(python=shlex.quote(sys.executable), repo=shlex.quote(str(repo)),
                                                    port=port)
        servers.append(serving.Server(f"feedback-{name}", shlex.split(line), port, log_dir=work))
    try:
        for s in servers:
            s.start()
        for s in servers:
            problem = s.ready()
            if problem:
                raise RuntimeError(f"{s.name}: {problem}")
        expected = serving.reference_output()
        for s in servers:
            problem = serving.check_answer(s, expected)
            if problem:
                print(f"warning: {s.name}: {problem}")
        script = serving.wrk_script(work)
        out = []
        for c in args.concurrency:
            for s in servers:  # warm-up
                serving.run_wrk(s, c, 1, script)
            rounds = []
            for r in range(args.rounds):
                pair = {}
                for s in (servers if r % 2 == 0 else servers[::-1]):
                    pair[s.name] = serving.run_wrk(s, c, args.window, script)
                on, off = pair["feedback-on"], pair["feedback-off"]
                if on.req_s and off.req_s:
                    rounds.append({"on_req_s": round(on.req_s), "off_req_s": round(off.req_s),
                                   "ratio": round(on.req_s / off.req_s, 3), "on_p50_ms": on.p50_ms,
                                   "off_p50_ms": off.p50_ms, "on_p99_ms": on.p99_ms, "off_p99_ms": off.p99_ms,
                                   "errors": (on.errors or 0) + (off.errors or 0)})
                else:
                    print(f"warning: c={c} round {r}: {on.note or off.note}")
            if rounds:
                out.append({"concurrency": c, "ratio_median": statistics.median(x["ratio"] for x in rounds),
                            "on_p50_ms_median": statistics.median(x["on_p50_ms"] for x in rounds),
                            "off_p50_ms_median": statistics.median(x["off_p50_ms"] for x in rounds),
                            "on_p99_ms_median": statistics.median(x["on_p99_ms"] for x in rounds),
                            "off_p99_ms_median": statistics.median(x["off_p99_ms"] for x in rounds),
                            "rounds": rounds})
        return out
    finally:
        for s in servers:
            s.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds of 2 s, 50k calls")
    ap.add_argument("--rounds", type=int, help="wrk rounds per concurrency, each server once (default 6)")
    ap.add_argument("--window", type=float, help="seconds per wrk window (default 3)")
    ap.add_argument("--concurrency", default="1,64", help="comma-separated (default 1,64)")
    ap.add_argument("--calls", type=int, help="in-process record calls per timing (default 200000)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--against", help="also time PredictionRecord.add against this git revision's")
    ap.add_argument("--record-only", action="store_true", help="only the in-process measurements")
    args = ap.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 6)
    args.window = args.window or (2.0 if args.quick else 3.0)
    args.calls = args.calls or (50_000 if args.quick else 200_000)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]

    info = runinfo.machine()
    print(json.dumps(info))
    record = record_cost(args.calls)
    print(f"record (in-process, tiny MLP batch 1, record full): {record['record_us']:.2f} µs per request "
          f"({record['record_with_group_us']:.2f} with a group parameter); join {record['join_per_label_us']:.2f} µs "
          f"per label; {record['entries']} entries held, {record['ids_held']} ids known")
    if args.against:
        rab = record["against"] = record_ab(args.against, args.calls)
        print(f"PredictionRecord.add here vs {rab['against']} (alternating, median of {rab['rounds']} rounds of "
              f"{rab['calls']}): {rab['here_us']:.3f} vs {rab['rev_us']:.3f} µs, ratio {rab['ratio']:.3f}")
    if args.record_only:
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": info, "record": record}, indent=1))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        results = ab(args, Path(tmp))
    print(f"\nwrk A/B, JSON, no request id: feedback on vs off ({args.rounds} rounds of {args.window:g} s)")
    print(f"{'c':>4} {'on/off req/s':>13} {'on p50 ms':>10} {'off p50 ms':>11} {'on p99 ms':>10} {'off p99 ms':>11}")
    for r in results:
        print(f"{r['concurrency']:>4} {r['ratio_median']:>13.3f} {r['on_p50_ms_median']:>10.3f} "
              f"{r['off_p50_ms_median']:>11.3f} {r['on_p99_ms_median']:>10.3f} {r['off_p99_ms_median']:>11.3f}")
        print("     rounds: " + ", ".join(f"{x['ratio']:.3f} ({x['on_req_s']}/{x['off_req_s']})" for x in r["rounds"]))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "record": record, "ab": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
