"""Side by side in rounds: every server up at once, wrk windows alternating between them.

bench/serving.py measures one server after another; on a shared machine whose load moves
(other jobs come and go), that makes the ratios drift with the machine's state. Here Triton,
the bare uvicorn echo, the Starlette baseline and loopserve at several `workers` counts are all
started (each idle while another is measured), then each round gives every server one wrk
window per concurrency, in a rotating order; the report is the median per server and the
median of the per-round ratios to Triton and to the echo (req/s) and to the hand-written Starlette
baseline (p50 latency, the c=1 target). Also each server's CPU µs per request (all of its
processes, from /proc).

loopserve-wN-spinU is loopserve at workers N with http.spin_us U (the hop between front end and
engine polls up to U µs before sleeping; off by default), to measure the polling side by side;
loopserve-wN-native is loopserve at workers N with http.native_infer (the engine answers infer
itself, csrc/http/: the default at N > 1), loopserve-wN-python the same without it (the front
ends' Python infer route), loopserve-wN-nofeedback with the model's feedback record off (what
recording every prediction costs).

    .venv/bin/python bench/serving_rounds.py [--servers triton,echo,loopserve-w1,loopserve-w2,loopserve-w2-spin100]
                                             [--concurrency 64] [--rounds 5] [--seconds 3]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving as harness  # noqa: E402
from loopserve import zoo  # noqa: E402

ASGI_MODEL = "ml%70"  # the model's name with a %-escape: the same route, through ASGI


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="triton,echo,baseline,loopserve-w1,loopserve-w2")
    parser.add_argument("--concurrency", default="64")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--asgi", action="store_true",
                        help="also drive each loopserve server through its ASGI infer route (a %%-escaped path, "
                             "which the fast path leaves to ASGI), reported as loopserve-wN-asgi")
    args = parser.parse_args()
    names = args.servers.split(",")
    concurrency = [int(c) for c in args.concurrency.split(",")]
    print(harness.machine())
    results: dict[tuple[str, int], list] = {}
    with tempfile.TemporaryDirectory(prefix="bench-rounds-") as tmp:
        work = Path(tmp)
        log_dir = work / "logs"
        log_dir.mkdir()
        script = harness.wrk_script(work)
        servers = []
        for name in names:
            if name.startswith("loopserve-w"):
                workers, _, variant = name[len("loopserve-w"):].partition("-")
                cmd = harness.DEFAULT_LOOPSERVE_CMD
                if variant.startswith("spin"):  # loopserve-w2-spin100: http.spin_us 100
                    config = work / f"{name}.yaml"
                    config.write_text(f"http:\n  spin_us: {int(variant[len('spin'):])}\n")
                    cmd += f" --config {config}"
                elif variant == "native":  # loopserve-w2-native: http.native_infer (csrc/http/)
                    cmd += " --native-infer"
                elif variant == "python":  # loopserve-w2-python: the front ends' infer route (no native path)
                    cmd += " --no-native-infer"
                elif variant == "nofeedback":  # loopserve-w2-nofeedback: the model records no predictions
                    repo = work / "loopserve-models-nofeedback"
                    zoo.write_model_dir(repo, harness.MODEL, zoo.tiny_mlp(), fmt="onnx", max_batch_size=64,
                                        max_queue_delay_us=500, extra_config="threads: 1\nfeedback: {enabled: false}\n")
                    cmd = cmd.replace("{repo}", shlex.quote(str(repo)))
                elif variant:
                    raise SystemExit(f"unknown server {name!r}")
                s = harness.loopserve_server(log_dir, work, cmd, int(workers))
                s.name, s.log_path = name, log_dir / f"{name}.log"
            else:
                s = {"triton": harness.triton_server, "echo": harness.echo_server,
                     "baseline": harness.baseline_server}[name](log_dir, work)
            s.start()
            servers.append(s)
        try:
            for s in servers:
                why = s.ready(120)
                if why is not None:
                    print(f"[{s.name}] not ready: {why}")
                    return 1
                harness.warm_up(s, script)
            for r in range(args.rounds):
                order = servers[r % len(servers):] + servers[:r % len(servers)]
                for s in order:
                    for c in concurrency:
                        res = harness.run_wrk(s, c, args.seconds, script)
                        results.setdefault((s.name, c), []).append(res)
                        if args.asgi and s.name.startswith("loopserve"):
                            res = harness.run_wrk(s, c, args.seconds, script, model=ASGI_MODEL)
                            results.setdefault((s.name + "-asgi", c), []).append(res)
                print(f"round {r + 1}: " + ", ".join(
                    f"{s.name} {harness.fmt(results[(s.name, concurrency[0])][-1].req_s, '.0f')}" for s in servers),
                    flush=True)
        finally:
            for s in servers:
                s.stop()
    print(f"\n{'server':<20}{'c':>5}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'cpu µs/req':>11}{'÷ Triton':>10}"
          f"{'÷ echo':>9}{'p50 ÷ baseline':>16}")
    for c in concurrency:
        for name in [n for s in names for n in ([s, s + "-asgi"] if args.asgi and s.startswith("loopserve") else [s])]:
            rs = results.get((name, c), [])
            ok = [r for r in rs if r.req_s]
            if not ok:
                continue

            def per_round(peer: str, of=lambda r: r.req_s) -> float | None:
                peers = results.get((peer, c), [])
                ratios = [of(a) / of(b) for a, b in zip(rs, peers) if a.req_s and b.req_s and of(b)]
                return statistics.median(ratios) if ratios else None

            cpu = [r.extra.get("server_cpu_us_per_req") for r in ok if r.extra.get("server_cpu_us_per_req")]
            print(f"{name:<20}{c:>5}{statistics.median(r.req_s for r in ok):>9.0f}"
                  f"{statistics.median(r.p50_ms for r in ok):>9.2f}{statistics.median(r.p99_ms for r in ok):>9.2f}"
                  f"{harness.fmt(statistics.median(cpu) if cpu else None, '11.0f')}"
                  f"{harness.fmt(per_round('triton'), '10.2f')}{harness.fmt(per_round('echo'), '9.2f')}"
                  f"{harness.fmt(per_round('baseline', lambda r: r.p50_ms), '16.2f')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
