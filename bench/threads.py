"""Thread budgets served over HTTP: `threads` unset (onnxruntime's own default), `auto`, 1 and 2,
at each front-end count asked for.

For each model (the heavy MLP 512->2048->2048->2, then the tiny MLP 32->64->2) and each `--workers`
value (default: the server's own, `workers: auto`), one loopserve server per variant is started at
once on its own port, from model directories that differ only in the `threads` line:

    runtime  threads: 0  (what an unset `threads` meant before `auto`: onnxruntime's default,
                          a thread per core, idle threads spinning)
    auto     (nothing: the default)
    1        threads: 1
    2        threads: 2
    auto'    (with --twin: a second server exactly like auto, to measure the noise)

The limit is the model in-process: onnxruntime on the same file, 1 intra-op and 1 inter-op thread,
`session.run` at batch 64 in a loop (as serving.py's heavy section). Each round goes through the
rows (workers x concurrency 64, 128 x body JSON, binary tensors), and for each runs one 1 s wrk
window per variant, in an order that rotates each round (the other servers wait idle), each right
after 0.3 s of the in-process limit. A window's share is its served rows/s (batch-1 requests) ÷
that limit, so a window and its limit see the same machine. The table gives each variant's median
share over the rounds with its spread (25th-75th percentile), and checks that `auto` is the best or
within 5% of the best in every row (exit status 0; 3 where the rows it is not are all within
the run's noise, as below; 1 otherwise).

The box is shared, so the run measures its own noise: two servers with the same settings (auto
and the fixed count it chose, or auto and auto' with --twin) differ only by noise, and a row whose
twins differ by more than 5% cannot separate 5% at all. The run also draws its rounds again
(bootstrap) for a 90% interval of auto ÷ best: a row whose interval reaches 0.95 cannot show auto
more than 5% below either. The table marks such rows. "pooled" sets auto's settings (the windows
of auto and its twins together) against the best of the other settings. Beside each row: the CPU
the front-end processes and the engine used during auto's windows (cores busy), which is what the
front ends actually take from the executors.

    apt-get install -y wrk
    .venv/bin/python bench/threads.py                           # 16 rounds, ~16 min
    .venv/bin/python bench/threads.py --quick                   # 5 rounds, ~5 min
    .venv/bin/python bench/threads.py --models heavy --workers 1,2 --twin --json threads.json
    .venv/bin/python bench/threads.py --models heavy --instances 2   # two executors per model
    .venv/bin/python bench/threads.py --summarize threads.json      # the tables of a saved run again
"""

from __future__ import annotations

import argparse
import json
import os
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
TWIN = "auto'"
MODELS = {"heavy": 512, "tiny": 32}  # name -> input width
BATCH = 64
DELAY_US = 2000
CONCURRENCY = (64, 128)
BODIES = ("json", "binary")
WITHIN = 0.05  # auto must be within 5% of the best variant
DIRECT_S = 0.3  # the in-process window before each served window


def model_dirs(work: Path, model: str, variants: dict[str, str], instances: int) -> dict[str, Path]:
    """One repository per variant: the same exported file, configs that differ in `threads`."""
    from loopserve import zoo

    module = zoo.heavy_mlp() if model == "heavy" else zoo.tiny_mlp()
    first = zoo.write_model_dir(work / f"{model}-export", model, module, fmt="onnx", max_batch_size=BATCH,
                                max_queue_delay_us=DELAY_US,
                                extra_config=f"instances: {instances}\n" if instances != 1 else "")
    repos = {}
    for variant, line in variants.items():
        repo = work / f"{model}-{variant.replace(chr(39), 'twin')}"
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


def start_servers(repos: dict[str, Path], model: str, n_in: int, log_dir: Path, cmd: str, workers: str,
                  scripts: dict[str, Path]) -> dict[str, Server]:
    """A server per variant, all up at once, checked against torch and warmed up."""
    from loopserve import zoo

    expected = reference_output(zoo.heavy_mlp() if model == "heavy" else zoo.tiny_mlp(), n_in)
    servers = {}
    try:
        for variant, repo in repos.items():
            port = free_port()
            line = cmd.format(python=shlex.quote(sys.executable), repo=shlex.quote(str(repo)), port=port)
            argv = shlex.split(line) + ([] if workers == "auto" else ["--workers", workers])
            name = f"{model}-w{workers}-{variant.replace(chr(39), 'twin')}"
            servers[variant] = Server(name, argv, port, log_dir=log_dir)
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


def cpu_by_role(server: Server) -> tuple[float, float]:
    """CPU seconds (user + system) so far of the server's engine and of its front ends (the
    other processes of its session), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    engine = front = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid = int(stat.parent.name)
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            continue
        if int(fields[3]) != server.proc.pid:  # field 6, the session id (start_new_session=True)
            continue
        used = int(fields[11]) + int(fields[12])  # utime, stime
        if pid == server.proc.pid:
            engine += used
        else:
            front += used
    return engine / tick, front / tick


def window(server: Server, limit, c: int, body: str, duration_s: float, script: Path, model: str) -> dict:
    """One served window right after its in-process limit, with the CPU each side of the server used."""
    direct = limit(DIRECT_S)  # the previous window's last requests drain meanwhile
    before, t0 = cpu_by_role(server), time.perf_counter()
    r = run_wrk(server, c, duration_s, script, model=model)
    after, wall = cpu_by_role(server), time.perf_counter() - t0
    return {"concurrency": c, "body": body, "direct_rows_per_s": direct, "req_s": r.req_s, "p99_ms": r.p99_ms,
            "errors": r.errors, "note": r.note, "engine_cores": (after[0] - before[0]) / wall,
            "front_end_cores": (after[1] - before[1]) / wall}


def run_model(model: str, work: Path, log_dir: Path, cmd: str, workers: str, variants: dict[str, str],
              instances: int, rounds: int, duration_s: float) -> dict:
    n_in = MODELS[model]
    repos = model_dirs(work / f"w{workers}", model, variants, instances)
    scripts = {"json": wrk_script(work, n_in, f"{model}.lua"),
               "binary": wrk_binary_script(work, n_in, f"{model}-binary.lua")}
    servers = start_servers(repos, model, n_in, log_dir, cmd, workers, scripts)
    out = {"model": model, "workers": workers, "instances": instances, "budgets": {}, "rounds": []}
    try:
        for variant, server in servers.items():
            out["budgets"][variant] = chosen_budget(server, model)
            why = out["budgets"][variant].get("thread_budget.why", "(no budget reported)")
            print(f"  [{variant:>7}] {why}", flush=True)
        names = list(variants)
        limit = in_process(repos["auto"] / model / "1" / "model.onnx", n_in)
        for i in range(rounds):
            order = names[i % len(names):] + names[:i % len(names)]
            rd = {"order": order, "windows": []}
            for c in CONCURRENCY:
                for body in BODIES:
                    shares = []
                    for variant in order:
                        w = {"variant": variant,
                             **window(servers[variant], limit, c, body, duration_s, scripts[body], model)}
                        rd["windows"].append(w)
                        shares.append(f"{variant} {share(w):.3g}{' ' + w['note'] if w['note'] else ''}")
                    print(f"  round {i + 1} w={workers} c={c:<3} {body:<6} " + ", ".join(shares), flush=True)
            out["rounds"].append(rd)
    finally:
        for server in servers.values():
            server.stop()
    out["twins"] = twins(out["budgets"])
    out["summary"] = summary(out["rounds"], list(variants), out["twins"])
    return out


def share(window: dict) -> float:
    return (window["req_s"] or 0.0) / window["direct_rows_per_s"]


def twins(budgets: dict[str, dict[str, str]]) -> list[tuple[str, str]]:
    """Pairs of variants that ran with the same settings (thread count and spinning): what differs
    between them is noise."""
    settings = ("intra_op_thread_count", "thread_spinning")
    names = [v for v in budgets if budgets[v]]
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
            if all(budgets[a].get(k) == budgets[b].get(k) for k in settings)]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def bootstrap_auto_vs_best(shares: dict[str, list[float]], draws: int = 2000) -> tuple[float, float]:
    """A 90% interval for auto's median ÷ the best median: the rounds drawn again with replacement
    (a round keeps all its variants' windows together), the ratio taken each time."""
    table = np.array([shares[v] for v in shares])  # variants x rounds
    rng = np.random.default_rng(17)
    picks = rng.integers(0, table.shape[1], size=(draws, table.shape[1]))
    medians = np.median(table[:, picks], axis=2)  # variants x draws
    ratios = medians[list(shares).index("auto")] / medians.max(axis=0)
    low, high = np.quantile(ratios, [0.05, 0.95])
    return float(low), float(high)


def summary(rounds: list[dict], variants: list[str], pairs: list[tuple[str, str]]) -> list[dict]:
    """Per (concurrency, body): each variant's median share and spread, whether auto is within 5%
    of the best, and how far apart the twins came out (the noise)."""
    rows = []
    for c in CONCURRENCY:
        for body in BODIES:
            cell = lambda v: [w for rd in rounds for w in rd["windows"]
                              if (w["variant"], w["concurrency"], w["body"]) == (v, c, body)]
            spread, medians = {}, {}
            for variant in variants:
                shares = [share(w) for w in cell(variant)]
                if shares:
                    spread[variant] = quartiles(shares)
                    medians[variant] = spread[variant][1]
            best = max(medians.values())
            auto = medians.get("auto")
            noise = max((abs(medians[a] - medians[b]) / max(medians[a], medians[b]) for a, b in pairs), default=None)
            ok = auto is not None and auto >= (1 - WITHIN) * best
            # auto's settings, every server that ran them pooled (twice the windows or more where
            # auto has twins), against the best of the other settings.
            same = {"auto"} | {b for a, b in pairs if a == "auto"} | {a for a, b in pairs if b == "auto"}
            others = [medians[v] for v in medians if v not in same]
            pooled = statistics.median(share(w) for v in same for w in cell(v))
            low, high = bootstrap_auto_vs_best({v: [share(w) for w in cell(v)] for v in medians})
            rows.append({"concurrency": c, "body": body, "share": medians, "spread": spread,
                         "auto_vs_best_interval": [low, high],
                         "auto_vs_best": auto / best if best and auto is not None else None,
                         "auto_settings_vs_best_other": pooled / max(others) if others else None,
                         "best": max(medians, key=medians.get), "twin_gap": noise, "ok": ok,
                         # Below by more than 5%, but the same settings differ by more than that,
                         # or the interval reaches 0.95: the run cannot tell that from noise.
                         "noise_bound": not ok and ((noise is not None and noise > WITHIN) or high >= 1 - WITHIN),
                         "front_end_cores": statistics.median(w["front_end_cores"] for w in cell("auto")),
                         "engine_cores": statistics.median(w["engine_cores"] for w in cell("auto"))})
    return rows


def print_summary(result: dict, rounds: int) -> None:
    model, variants = result["model"], list(result["summary"][0]["share"])
    print(f"\n{model} MLP, workers {result['workers']}, instances {result['instances']}: served rows/s ÷ "
          f"in-process batch-{BATCH} rows/s (1 thread), median of {rounds} rounds [25th-75th percentile]")
    print(f"{'conc':>4} {'body':<6} " + " ".join(f"{v:>22}" for v in variants)
          + f" {'auto/best':>9} {'90% interval':>12} {'pooled':>6} {'twins':>6} {'FE/eng cores':>12}")
    for row in result["summary"]:
        cells = " ".join(f"{row['share'][v]:>7.3g} [{row['spread'][v][0]:.3g}-{row['spread'][v][2]:.3g}]".rjust(22)
                         for v in variants)
        gap = f"{row['twin_gap']:6.1%}" if row["twin_gap"] is not None else f"{'-':>6}"
        if row["ok"]:
            mark = "ok"
        elif row["noise_bound"]:
            why = "twins differ by more" if (row["twin_gap"] or 0) > WITHIN else f"interval reaches {1 - WITHIN:.2f}"
            mark = f"auto {1 - row['auto_vs_best']:.0%} below {row['best']}: noise ({why})"
        else:
            mark = f"AUTO MORE THAN {WITHIN:.0%} BELOW {row['best']}"
        low, high = row["auto_vs_best_interval"]
        print(f"{row['concurrency']:>4} {row['body']:<6} {cells} {row['auto_vs_best']:9.2f} {low:5.2f}-{high:<6.2f} "
              f"{row['auto_settings_vs_best_other'] or float('nan'):6.2f} {gap} "
              f"{row['front_end_cores']:5.2f}/{row['engine_cores']:.2f}  {mark}")
    auto = result["budgets"].get("auto", {})
    print(f"auto chose {auto.get('intra_op_thread_count', '?')} intra-op thread(s): {auto.get('thread_budget.why')}")
    if result["twins"]:
        print("same settings, so their gap (twins) is the noise: "
              + "; ".join(f"{a} and {b}" for a, b in result["twins"]))
    else:
        print("no two variants ran with the same settings: --twin measures the noise")
    print("90% interval: of auto/best, the rounds resampled (bootstrap); its top under 0.95 would mean auto is "
          "really more than 5% below the best")
    print("pooled: auto's settings (auto and its twins' windows together) ÷ the best other setting")
    print("FE/eng cores: CPU the front-end processes / the engine used during auto's windows (median)"
          + ("; workers 1 is one process, all of it counted as the engine" if result["workers"] == "1" else ""))


def verdict(results: list[dict]) -> int:
    """0: auto within 5% of the best in every row; 3: not in some rows, all of which the run cannot
    tell from noise; 1: auto more than 5% below the best in a row the run can tell."""
    rows = [row for r in results for row in r["summary"]]
    missed = [row for row in rows if not row["ok"]]
    if not missed:
        print(f"\nauto is the best or within {WITHIN:.0%} of the best in all {len(rows)} rows")
        return 0
    noise = [row for row in missed if row["noise_bound"]]
    print(f"\nauto is the best or within {WITHIN:.0%} of the best in {len(rows) - len(missed)} of {len(rows)} rows; "
          f"{len(noise)} more cannot be told from noise in this run")
    return 3 if len(noise) == len(missed) else 1


def print_saved(path: Path) -> int:
    saved = json.loads(path.read_text())
    print(f"{path}: machine {saved['machine']['cpu']}, source {saved['machine']['source_digest']}")
    for result in saved["results"]:
        result["twins"] = twins(result["budgets"])
        result["summary"] = summary(result["rounds"], list(result["budgets"]), result["twins"])
        print_summary(result, saved["rounds"])
    return verdict(saved["results"])


def main() -> int:
    parser = argparse.ArgumentParser(description="threads unset / auto / 1 / 2, served over HTTP")
    parser.add_argument("--quick", action="store_true", help="5 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 16, quick 5)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per wrk window (default 1)")
    parser.add_argument("--models", default="heavy,tiny", help="comma-separated: heavy, tiny")
    parser.add_argument("--workers", default="auto", help="comma-separated front-end counts (default: auto)")
    parser.add_argument("--instances", type=int, default=1, help="instances of the model (default 1)")
    parser.add_argument("--twin", action="store_true", help=f"add {TWIN}, a second server like auto (the noise)")
    parser.add_argument("--loopserve-cmd", default=DEFAULT_LOOPSERVE_CMD,
                        help="format string with {python}, {repo}, {port}")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--summarize", metavar="PATH", help="print the tables of a run saved with --json, and stop")
    args = parser.parse_args()
    if args.summarize:
        return print_saved(Path(args.summarize))
    rounds = args.rounds or (5 if args.quick else 16)
    duration = args.duration or 1.0
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    workers = [w.strip() for w in args.workers.split(",") if w.strip()]
    variants = {**VARIANTS, **({TWIN: VARIANTS["auto"]} if args.twin else {})}
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk")
        return 2
    if unknown := [m for m in models if m not in MODELS]:
        print(f"unknown models {unknown}; expected {sorted(MODELS)}")
        return 2
    if bad := [w for w in workers if w != "auto" and not w.isdigit()]:
        print(f"bad --workers {bad}: counts or auto")
        return 2

    import onnxruntime

    info = machine(onnxruntime=onnxruntime.__version__)
    print(f"machine: {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable), "
          f"source {info['source_digest']}; wrk shares the cores with the servers")
    print(f"{rounds} rounds of {duration:g} s windows; variants {', '.join(variants)}; workers {', '.join(workers)}; "
          f"instances {args.instances}; c={CONCURRENCY}, {BODIES}")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        work = Path(tmp)
        (work / "logs").mkdir()
        for model in models:
            for w in workers:
                print(f"\n[{model}, workers {w}]", flush=True)
                results.append(run_model(model, work, work / "logs", args.loopserve_cmd, w, variants,
                                         args.instances, rounds, duration))
    for result in results:
        print_summary(result, rounds)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rounds": rounds, "duration_s": duration,
                                               "results": results}, indent=2))
        print(f"\nwrote {args.json}")
    return verdict(results)


if __name__ == "__main__":
    sys.exit(main())
