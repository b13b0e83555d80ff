"""Thread budgets served over HTTP: `threads` unset (onnxruntime's own default), `auto`, 1 and 2.

For each model (the heavy MLP 512->2048->2048->2, then the tiny MLP 32->64->2), one loopserve
server per variant is started at once on its own port, from model directories that differ only
in the `threads` line:

    runtime  threads: 0  (what an unset `threads` meant before `auto`: onnxruntime's default,
                          a thread per core, idle threads spinning)
    auto     (nothing: the default)
    1        threads: 1
    2        threads: 2

The limit is the model in-process: onnxruntime on the same file, 1 intra-op and 1 inter-op thread,
`session.run` at batch 64 in a loop (as serving.py's heavy section). Each round goes through the
concurrencies (64, 128) and bodies (JSON, binary tensors), and for each runs one 1 s wrk window
per variant, in an order that rotates each round (the other servers wait idle), each right after
0.5 s of the in-process limit. A window's figure is its served rows/s (batch-1 requests) ÷ that
limit, so a window and its limit see the same machine; the table gives each variant's median over
the rounds and checks that `auto` is the best or within 5% of the best in every row (exit status
1 if not). The box is shared: the medians of many short alternating windows are what this
measures, not any single window.

    apt-get install -y wrk
    .venv/bin/python bench/threads.py                     # 12 rounds, ~15 min
    .venv/bin/python bench/threads.py --quick             # 4 rounds, ~5 min
    .venv/bin/python bench/threads.py --models heavy --rounds 7 --json threads.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from runinfo import machine
from serving import (DEFAULT_LOOPSERVE_CMD, Server, check_answer, check_binary_answer, free_port, infer_row,
                     reference_output, run_wrk, warm_up, wrk_binary_script, wrk_script)

VARIANTS = {"runtime": "threads: 0\n", "auto": "", "1": "threads: 1\n", "2": "threads: 2\n"}
MODELS = {"heavy": 512, "tiny": 32}  # name -> input width
BATCH = 64
DELAY_US = 2000
CONCURRENCY = (64, 128)
BODIES = ("json", "binary")
WITHIN = 0.05  # auto must be within 5% of the best variant
DIRECT_S = 0.5  # the in-process window before each served window


def model_dirs(work: Path, model: str) -> dict[str, Path]:
    """One repository per variant: the same exported file, configs that differ in `threads`."""
    from loopserve import zoo

    module = zoo.heavy_mlp() if model == "heavy" else zoo.tiny_mlp()
    first = zoo.write_model_dir(work / f"{model}-export", model, module, fmt="onnx", max_batch_size=BATCH,
                                max_queue_delay_us=DELAY_US)
    repos = {}
    for variant, line in VARIANTS.items():
        repo = work / f"{model}-{variant}"
        shutil.copytree(first, repo / model)
        config = repo / model / "config.yaml"
        config.write_text(config.read_text() + line)
        repos[variant] = repo
    return repos


def in_process(model_file: Path, n_in: int):
    """The limit: a function of seconds giving `session.run` rows/s at batch 64 on one thread, in
    this process."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.tile(np.asarray(infer_row(n_in), np.float32), (BATCH, 1))}
    for _ in range(3):
        session.run(None, feed)

    def rows_per_s(seconds: float) -> float:
        n, start = 0, time.perf_counter()
        while time.perf_counter() < start + seconds or n == 0:
            session.run(None, feed)
            n += 1
        return n * BATCH / (time.perf_counter() - start)

    return rows_per_s


def start_servers(repos: dict[str, Path], model: str, n_in: int, log_dir: Path, cmd: str,
                  scripts: dict[str, Path]) -> dict[str, Server]:
    """A server per variant, all up at once, checked against torch and warmed up."""
    from loopserve import zoo

    expected = reference_output(zoo.heavy_mlp() if model == "heavy" else zoo.tiny_mlp(), n_in)
    servers = {}
    try:
        for variant, repo in repos.items():
            port = free_port()
            line = cmd.format(python=shlex.quote(sys.executable), repo=shlex.quote(str(repo)), port=port)
            servers[variant] = Server(f"{model}-{variant}", shlex.split(line), port, log_dir=log_dir)
            servers[variant].start()
        for variant, server in servers.items():
            why = server.ready()
            if why is not None:
                raise RuntimeError(f"{server.name}: {why}")
            for check in (check_answer, check_binary_answer):
                wrong = check(server, expected, model=model, n_in=n_in)
                if wrong is not None:
                    print(f"  [{server.name}] WARNING: {wrong}")
            warm_up(server, scripts["json"], model=model)
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers


def chosen_budget(server: Server, model: str) -> dict[str, str]:
    """The thread budget the server reports in its model config."""
    with urllib.request.urlopen(f"{server.url}/v2/models/{model}/config", timeout=10) as r:
        params = json.loads(r.read()).get("parameters", {})
    return {k: v["string_value"] for k, v in params.items()}


def run_model(model: str, work: Path, log_dir: Path, cmd: str, rounds: int, duration_s: float) -> dict:
    n_in = MODELS[model]
    repos = model_dirs(work, model)
    scripts = {"json": wrk_script(work, n_in, f"{model}.lua"),
               "binary": wrk_binary_script(work, n_in, f"{model}-binary.lua")}
    servers = start_servers(repos, model, n_in, log_dir, cmd, scripts)
    out = {"model": model, "budgets": {}, "rounds": []}
    try:
        for variant, server in servers.items():
            out["budgets"][variant] = chosen_budget(server, model)
            why = out["budgets"][variant].get("thread_budget.why", "(no budget reported)")
            print(f"  [{variant:>7}] {why}", flush=True)
        variants = list(VARIANTS)
        limit = in_process(repos["auto"] / model / "1" / "model.onnx", n_in)
        for i in range(rounds):
            order = variants[i % len(variants):] + variants[:i % len(variants)]
            rd = {"order": order, "windows": []}
            for c in CONCURRENCY:
                for body in BODIES:
                    shares = []
                    for variant in order:
                        # The limit right before the window it divides, so both see the same machine
                        # (and the previous window's last requests drain meanwhile).
                        direct = limit(DIRECT_S)
                        r = run_wrk(servers[variant], c, duration_s, scripts[body], model=model)
                        w = {"variant": variant, "concurrency": c, "body": body, "direct_rows_per_s": direct,
                             "req_s": r.req_s, "p99_ms": r.p99_ms, "errors": r.errors, "note": r.note}
                        rd["windows"].append(w)
                        shares.append(f"{variant} {share(w):.3g}{' ' + r.note if r.note else ''}")
                    print(f"  round {i + 1} c={c:<3} {body:<6} " + ", ".join(shares), flush=True)
            out["rounds"].append(rd)
    finally:
        for server in servers.values():
            server.stop()
    out["summary"] = summary(out["rounds"])
    return out


def share(window: dict) -> float:
    return (window["req_s"] or 0.0) / window["direct_rows_per_s"]


def summary(rounds: list[dict]) -> list[dict]:
    """Per (concurrency, body): each variant's median share, and whether auto is within 5% of the best."""
    rows = []
    for c in CONCURRENCY:
        for body in BODIES:
            medians = {}
            for variant in VARIANTS:
                shares = [share(w) for rd in rounds for w in rd["windows"]
                          if (w["variant"], w["concurrency"], w["body"]) == (variant, c, body)]
                medians[variant] = statistics.median(shares) if shares else None
            best = max(v for v in medians.values() if v is not None)
            rows.append({"concurrency": c, "body": body, "share": medians,
                         "auto_vs_best": medians["auto"] / best if best else None,
                         "ok": medians["auto"] is not None and medians["auto"] >= (1 - WITHIN) * best})
    return rows


def print_summary(result: dict, rounds: int) -> None:
    model = result["model"]
    print(f"\n{model} MLP: served rows/s ÷ in-process batch-{BATCH} rows/s (1 thread), median of {rounds} rounds")
    print(f"{'conc':>4} {'body':<6} " + " ".join(f"{v:>8}" for v in VARIANTS) + f" {'auto/best':>9}")
    for row in result["summary"]:
        cells = " ".join(f"{row['share'][v]:8.3g}" if row["share"][v] is not None else f"{'-':>8}"
                         for v in VARIANTS)
        mark = "ok" if row["ok"] else f"AUTO MORE THAN {WITHIN:.0%} BELOW THE BEST"
        print(f"{row['concurrency']:>4} {row['body']:<6} {cells} {row['auto_vs_best']:9.2f}  {mark}")
    budgets = result["budgets"]
    auto = budgets.get("auto", {})
    print(f"auto chose {auto.get('intra_op_thread_count', '?')} intra-op thread(s): {auto.get('thread_budget.why')}")
    settings = ("intra_op_thread_count", "thread_spinning")
    twins = [v for v in VARIANTS if v != "auto" and budgets.get(v)
             and all(budgets[v].get(k) == auto.get(k) for k in settings)]
    if twins:
        print(f"auto and {', '.join(twins)} run with the same settings here: the gap between them is the noise")


def main() -> int:
    parser = argparse.ArgumentParser(description="threads unset / auto / 1 / 2, served over HTTP")
    parser.add_argument("--quick", action="store_true", help="4 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 12, quick 4)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per wrk window (default 1)")
    parser.add_argument("--models", default="heavy,tiny", help="comma-separated: heavy, tiny")
    parser.add_argument("--loopserve-cmd", default=DEFAULT_LOOPSERVE_CMD,
                        help="format string with {python}, {repo}, {port}")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    rounds = args.rounds or (4 if args.quick else 12)
    duration = args.duration or 1.0
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk")
        return 2
    if unknown := [m for m in models if m not in MODELS]:
        print(f"unknown models {unknown}; expected {sorted(MODELS)}")
        return 2

    import onnxruntime

    info = machine(onnxruntime=onnxruntime.__version__)
    print(f"machine: {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable), "
          f"source {info['source_digest']}; wrk shares the cores with the servers")
    print(f"{rounds} rounds of {duration:g} s windows; variants {', '.join(VARIANTS)}; c={CONCURRENCY}, {BODIES}")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        work = Path(tmp)
        (work / "logs").mkdir()
        for model in models:
            print(f"\n[{model}]", flush=True)
            results.append(run_model(model, work, work / "logs", args.loopserve_cmd, rounds, duration))
    for result in results:
        print_summary(result, rounds)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rounds": rounds, "duration_s": duration,
                                               "results": results}, indent=2))
        print(f"\nwrote {args.json}")
    return 0 if all(row["ok"] for r in results for row in r["summary"]) else 1


if __name__ == "__main__":
    sys.exit(main())
