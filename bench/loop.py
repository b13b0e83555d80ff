"""The closed loop's figures: serving throughput while the pipeline trains, against idle; and
the demo's time from drift onset to a promoted v2.

Usage: .venv/bin/python bench/loop.py [--quick] [--rounds R] [--window S] [--no-demo]

1. A server serves the fraud model (v1, registry://fraud@production). wrk (JSON, one row, c=16)
   measures req/s in alternating windows: idle, and while a training run goes on in another
   process, started as the pipeline starts it (nice 10, half the cores for torch:
   loopserve.pipeline.runner.yield_to_serving). The ratio is the median of per-round ratios
   (target >= 0.8). Also shown: the same with training at normal priority and all threads.
2. `loopserve demo --quick` once: its time from drift onset to promoted v2, and failed requests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # noqa: E402
from runinfo import cpu_model, source_digest  # noqa: E402

TRAIN_CODE = """
import sys
from loopserve.pipeline.config import PipelineConfig
from loopserve.pipeline.runner import yield_to_serving
from loopserve.training import load_train_config, train
import msgspec
if sys.argv[2] == "yield":
    yield_to_serving(PipelineConfig(model="fraud", train=sys.argv[1]))
config = load_train_config(sys.argv[1])
config = msgspec.structs.replace(config, registry=msgspec.structs.replace(config.registry, enabled=False),
                                 tracking=msgspec.structs.replace(config.tracking, enabled=False), gates=None,
                                 epochs=50)
train(config, quiet=True)
"""

def wrk_script(work: Path, n_features: int) -> Path:
    """The JSON infer body of one fraud row, with bench/serving.py's wrk reporting hook."""
    body = json.dumps({"inputs": [{"name": "features", "shape": [1, n_features], "datatype": "FP32",
                                   "data": [0.5] * n_features}]})
    path = work / "fraud.lua"
    path.write_text(serving.WRK_JSON_REQUEST.replace("%BODY%", body) + "\n" + serving.WRK_DONE)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--window", type=float, default=5.0)
    ap.add_argument("--no-demo", action="store_true")
    args = ap.parse_args()
    rounds = 2 if args.quick else args.rounds
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; source {source_digest()}")

    from loopserve.demo import QUICK
    from loopserve.demo import setup as demo_setup

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        template = demo_setup.write_train_template(work, QUICK, seed=0)
        demo_setup.train_v1(template)
        port = serving.free_port()
        config = demo_setup.write_server_config(work, QUICK, port)
        server = serving.Server("loopserve", [sys.executable, "-m", "loopserve.cli", "serve", "--config", str(config)],
                                port, log_dir=work)
        server.start()
        try:
            why = server.ready()
            if why:
                print(why)
                return 1
            script = wrk_script(work, 12)
            serving.run_wrk(server, 16, 2, script, model="fraud")  # warm up
            results = {"idle": [], "yield": [], "greedy": []}
            for _ in range(rounds):
                for mode in ("idle", "yield", "greedy"):
                    trainer = None
                    if mode != "idle":
                        trainer = subprocess.Popen([sys.executable, "-c", TRAIN_CODE, str(template), mode],
                                                   cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        time.sleep(3.0)  # past its start-up, into the epochs
                    res = serving.run_wrk(server, 16, args.window, script, model="fraud")
                    if trainer is not None:
                        still = trainer.poll() is None
                        trainer.kill()
                        trainer.wait()
                        if not still:
                            print(f"note: the {mode} training ended before its window did")
                    results[mode].append(res.req_s or 0.0)
        finally:
            server.stop()
    idle = results["idle"]
    print("\n## serving while the pipeline trains (fraud MLP, wrk JSON c=16)\n")
    print("| training | req/s (median) | ratio to idle (median of rounds) |")
    print("| --- | ---: | ---: |")
    print(f"| none | {statistics.median(idle):,.0f} | 1.00 |")
    for mode, label in (("yield", "as the pipeline runs it (nice 10, half the cores)"),
                        ("greedy", "at normal priority, all cores")):
        ratios = [r / i for r, i in zip(results[mode], idle) if i]
        print(f"| {label} | {statistics.median(results[mode]):,.0f} | {statistics.median(ratios):.2f} |")

    if not args.no_demo:
        with tempfile.TemporaryDirectory() as tmp:
            from loopserve.demo import run_closed_loop

            summary = run_closed_loop(tmp, serving.free_port(), QUICK, echo=lambda _: None)
        print("\n## the demo (quick sizes)\n")
        for key in ("drift begins (s)", "drift detected (s)", "v2 promoted (s)", "drift onset to promoted v2 (s)",
                    "requests", "failed requests"):
            print(f"- {key}: {summary[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
