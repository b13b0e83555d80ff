"""Front ends against the engine: loopserve served at workers = 1, 2, 4, 8, driven by wrk with
binary and JSON bodies at c = 64 and 256, for the heavy MLP (512 -> 2048 -> 2048 -> 2, torch on
`cuda:0`, max_batch_size 256) and the tiny MLP (32 -> 64 -> 2, onnxruntime on the CPU), each
served alone. Prints req/s, p50, p99 and the scaling against workers = 1 of the same row; the
GPU host's target is workers=8 >= 5x workers=1 for the heavy model with binary bodies.

    python bench/workers_scaling.py [--workers 1,2,4,8] [--seconds 5] [--json out.json]
    python bench/workers_scaling.py --cpu    # the heavy model on the CPU too: a check of the script

Run on a GPU host by bench/gpu_session.sh (or bench/gpu_serving.sh), which builds the project
there first. The JSON is rewritten after each wrk run, so a run stopped part way keeps its rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving as harness  # noqa: E402  (bench/serving.py: servers, wrk scripts, wrk runs)

DEFAULT_CMD = "{python} -m loopserve.cli serve --model-repository {repo} --host 127.0.0.1 --port {port}"


def repos(work: Path, cpu: bool) -> dict[str, tuple[Path, int]]:
    """{model name: (repository, input width)}"""
    from loopserve import zoo

    heavy, tiny = work / "heavy", work / "tiny"
    device = "cpu\nthreads: 1" if cpu else "cuda:0"
    zoo.write_model_dir(heavy, "heavy", zoo.heavy_mlp(), fmt="pt2", max_batch_size=256, max_queue_delay_us=2000,
                        extra_config=f"device: {device}\ninstances: 2\n")
    zoo.write_model_dir(tiny, "mlp", zoo.tiny_mlp(), fmt="onnx", max_batch_size=64, max_queue_delay_us=500,
                        extra_config="threads: 1\n")
    return {"heavy": (heavy, 512), "mlp": (tiny, 32)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--concurrency", default="64,256")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--cpu", action="store_true", help="no GPU: the heavy model on the CPU, short windows")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk's threads (a 16-core host: 4)")
    parser.add_argument("--json")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    concurrency = [int(c) for c in args.concurrency.split(",")]
    rows, machine = [], harness.machine()

    def save():  # after each wrk run: a run stopped part way keeps its rows
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))

    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        work = Path(tmp)
        log_dir = work / "logs"
        log_dir.mkdir()
        for model, (repo, width) in repos(work, args.cpu).items():
            scripts = {"json": harness.wrk_script(work, width, f"{model}.lua"),
                       "binary": harness.wrk_binary_script(work, width, f"{model}-binary.lua")}
            for w in workers:
                port = harness.free_port()
                line = DEFAULT_CMD.format(python=sys.executable, repo=repo, port=port)
                server = harness.Server(f"{model}-w{w}", line.split() + ["--workers", str(w)], port, log_dir=log_dir)
                server.start()
                try:
                    why = server.ready(120)
                    if why is not None:
                        print(f"[{server.name}] skipped: {why}")
                        continue
                    harness.warm_up(server, scripts["json"], model)
                    for body, script in scripts.items():
                        for c in concurrency:
                            r = harness.run_wrk(server, c, args.seconds, script, model, args.wrk_threads)
                            rows.append({"model": model, "workers": w, "body": body, "c": c, "req_s": r.req_s,
                                         "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "errors": r.errors,
                                         "cpu_us_per_req": r.extra.get("server_cpu_us_per_req")})
                            save()
                            print(f"  {model:<6} workers={w} {body:<6} c={c:<4} req/s {harness.fmt(r.req_s, '8.0f')} "
                                  f"p50 {harness.fmt(r.p50_ms, '.2f')} ms p99 {harness.fmt(r.p99_ms, '.2f')} ms {r.note}",
                                  flush=True)
                finally:
                    server.stop()
    base = {(r["model"], r["body"], r["c"]): r["req_s"] for r in rows if r["workers"] == workers[0] and r["req_s"]}
    print(f"\n{'model':<7}{'body':<8}{'c':>5}{'workers':>9}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'÷ w=' + str(workers[0]):>8}")
    for r in rows:
        b = base.get((r["model"], r["body"], r["c"]))
        scale = r["req_s"] / b if b and r["req_s"] else None
        print(f"{r['model']:<7}{r['body']:<8}{r['c']:>5}{r['workers']:>9}{harness.fmt(r['req_s'], '10.0f')}"
              f"{harness.fmt(r['p50_ms'], '9.2f')}{harness.fmt(r['p99_ms'], '9.2f')}{harness.fmt(scale, '8.2f')}")
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
