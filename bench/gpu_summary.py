"""The table of bench/gpu_session.py: reads what its steps wrote to the work folder (JSON, the
pytest JUnit XML, the compile report's log) and states each figure next to its target.

    summarize(work, step_records, mode, budget_s, started) -> dict;  write(out, summary)
writes out/summary.md and out/summary.json. Standard library only (it runs before the build).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

TARGETS = {  # issue 13 (drift, instances, monitoring, spills) and issue 11 (workers, the CPU heavy MLP)
    "kernel_of_copy": 0.50, "instances_2_1_wide": 1.3, "monitoring_on_off": 0.97, "workers_8_1_heavy_binary": 5.0,
    "heavy_served_of_direct_binary": 0.85,
}


def summarize(work: Path, steps: list[dict], mode: str, budget_s: float, started: str) -> dict:
    """The figures of the steps in `steps` (this session's records: an earlier session's results
    left in `work` are not read)."""
    figures: list[dict] = []
    raw: dict = {}
    this_run = {st["name"] for st in steps if not st["status"].startswith("skipped")}

    def result(step: str, name: str, read):
        return read(work / name) if step in this_run else None

    gpu = mode == "gpu"  # the CPU dry run's speeds are no figures: their targets are not judged

    def fig(group, name, value, target=None, met=None, fmt="{:.2f}"):
        shown = fmt.format(value) if isinstance(value, (int, float)) else str(value)
        figures.append({"group": group, "figure": name, "value": value, "shown": shown,
                        "target": target, "met": met})

    tests = result("tests", "tests.xml", _tests)
    if tests:
        raw["tests"] = tests
        ran = tests["tests"] - tests["skipped"]
        ok = tests["failures"] == tests["errors"] == 0 and (mode == "cpu" or tests["skipped"] == 0)
        fig("tests", "tests/gpu", f"{ran - tests['failures'] - tests['errors']} passed, {tests['failures']} failed, "
            f"{tests['errors']} errors, {tests['skipped']} skipped", "all pass", ok)
        for name in tests["not_passed"]:
            fig("tests", f"  {name}", "did not pass")

    drift = result("drift", "drift.json", _json)
    if drift:
        raw["drift"] = drift
        fig("drift (13)", "copy bandwidth, GB/s (read + write)", drift["copy_gbps"], fmt="{:,.0f}")
        for case in drift.get("cases", []):
            rows, paths = f"{case['rows']:,} rows", case["paths"]
            fig("drift (13)", f"kernel equals the torch reference, {rows}", "yes" if case["equal"] else
                "NO: " + ", ".join(case["mismatch"]), "yes", case["equal"])
            for label in ("kernel, graph", "kernel, eager"):
                if label in paths:
                    ratio = paths[label]["of_copy_bw"]
                    judged = gpu and label == "kernel, graph"  # eager adds Triton's launch overhead
                    fig("drift (13)", f"{label}: GB/s ÷ copy GB/s, {rows}", ratio, f"≥ {TARGETS['kernel_of_copy']}",
                        ratio >= TARGETS["kernel_of_copy"] if judged else None)
            native = paths.get("torch native (bucketize + bincount), eager")
            best = paths.get("kernel, graph") or paths.get("kernel, eager")
            if native and best:
                fig("drift (13)", f"kernel speed ÷ torch native, {rows}", native["us"] / best["us"], fmt="{:.1f}×")
            parts = [f"{k}: {v['of_copy_bw']:.2f}" for k, v in paths.items()
                     if k.startswith(("bins", "moments", "categories"))]
            if parts:
                fig("drift (13)", f"parts, ÷ copy GB/s, {rows}", "; ".join(parts))

    batcher = result("batcher", "batcher.json", _json)
    if batcher:
        raw["batcher"] = batcher
        by = {(r["model"], r["instances"], r["clients"]): r for r in batcher.get("serving", [])}
        for (model, inst, c), r in by.items():
            if inst == 2 and (model, 1, c) in by and by[(model, 1, c)]["served"]:
                ratio = r["served"] / by[(model, 1, c)]["served"]
                wide = model == "wide"
                fig("instances (13)", f"instances 2 ÷ 1, {model} MLP, c={c}", ratio,
                    f"≥ {TARGETS['instances_2_1_wide']}" if wide else None,
                    ratio >= TARGETS["instances_2_1_wide"] if wide and gpu else None)
        for model in dict.fromkeys(m for m, _, _ in by):
            fig("instances (13)", f"served ÷ direct rows/s, {model} MLP", "; ".join(
                f"{inst} inst. c={c}: {r['served'] / r['direct']:.2f}" for (m, inst, c), r in by.items()
                if m == model and r["direct"]))
        on_off = batcher.get("monitoring_on_off")
        if on_off is not None:
            rounds = len(batcher.get("monitoring_rounds", []))
            fig("monitoring (13)", f"monitoring on ÷ off, wide, 2 instances, c=1024 (median of {rounds})", on_off,
                f"≥ {TARGETS['monitoring_on_off']}", on_off >= TARGETS["monitoring_on_off"] if gpu else None,
                "{:.3f}")
        if "monitor_path" in batcher:
            fig("monitoring (13)", "the monitor's path for a torch model" + ("" if gpu else " (interpreted)"),
                batcher["monitor_path"], "kernels", batcher["monitor_path"] == "kernels")
        stats = batcher.get("monitor_stats")
        if stats:
            fig("monitoring (13)", "monitor rows seen / skipped (queue full)",
                f"{stats['rows_seen']:,} / {stats['rows_skipped']:,}", "0 skipped" if gpu else None,
                stats["rows_skipped"] == 0 if gpu else None)

    compiled = result("compile", "compile.log", _compile_report)
    if compiled:
        raw["compile"] = compiled
        spilled = [v for v in compiled if v["spill_bytes"]]
        fig("compile (13)", f"sm_{compiled[0]['arch']} variants with spills, triton {compiled[0]['triton']}",
            ", ".join(f"{v['variant']} ({v['spill_bytes']} B)" for v in spilled) or "none", "none", not spilled)
        fig("compile (13)", "registers per variant",
            ", ".join(f"{v['variant']} {v['registers']}" for v in compiled))

    serving = result("serving", "serving.json", _json)
    table = []
    if serving:
        raw["serving"] = serving
        rows = serving.get("rows", [])
        first = min((r["workers"] for r in rows), default=1)
        base = {(r["model"], r["body"], r["c"]): r["req_s"] for r in rows if r["workers"] == first and r["req_s"]}
        for r in rows:
            b = base.get((r["model"], r["body"], r["c"]))
            table.append(dict(r, scale=r["req_s"] / b if b and r["req_s"] else None))
        top = max((r["workers"] for r in rows), default=first)
        for r in table:
            if r["model"] == "heavy" and r["body"] == "binary" and r["workers"] == top and r["scale"] is not None:
                target = TARGETS["workers_8_1_heavy_binary"] if top == 8 else None
                fig("workers (11)", f"workers {top} ÷ {first}, heavy MLP, binary, c={r['c']}", r["scale"],
                    f"≥ {target}" if target else None, r["scale"] >= target if target and gpu else None)

    heavy = (result("heavy", "heavy.json", _json) or {}).get("heavy")
    if heavy:
        raw["heavy"] = heavy
        target = TARGETS["heavy_served_of_direct_binary"]
        for r in heavy.get("summary", []):
            binary = r["body"] == "binary"
            case = f"c={r['concurrency']}, {r['body']}"
            fig("heavy CPU MLP (11)", f"served ÷ direct rows/s, {case}", r["ratio"], f"≥ {target}" if binary else None,
                r["ratio"] >= target if binary and gpu else None)
            fig("heavy CPU MLP (11)", f"  mean batch; model ms per full batch, served / direct, {case}",
                f"{r['mean_batch']:.1f}; {_f(r['served_batch_ms'], '{:.2f}')} / {r['direct_batch_ms']:.2f}")
        if heavy.get("skipped"):
            fig("heavy CPU MLP (11)", "skipped", heavy["skipped"].splitlines()[0])

    sweep = result("sweep", "sweep.json", _json)
    if sweep:
        raw["sweep"] = sweep
        for case in sweep.get("cases", []):
            tried = {k: v for k, v in case["paths"].items() if k.startswith("sweep ")}
            if tried:
                name, best = max(tried.items(), key=lambda kv: kv[1]["of_copy_bw"])
                fig("drift (13)", f"best sweep point (rows × warps × maxnreg), {case['rows']:,} rows",
                    f"{name[6:]}: {best['of_copy_bw']:.2f} of copy GB/s")

    machine = (drift or sweep or {}).get("machine") or (serving or {}).get("machine") or {}
    return {"mode": mode, "started": started, "budget_s": budget_s, "machine": machine, "steps": steps,
            "figures": figures, "workers_table": table, "raw": raw}


def write(out: Path, summary: dict) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "summary.md").write_text(markdown(summary))


def markdown(s: dict) -> str:
    lines = [f"# GPU session ({s['mode']}), {s['started']}", ""]
    if s["mode"] == "cpu":
        lines += ["**CPU dry run**: these numbers check the scripts; they are not GPU figures.", ""]
    m = s.get("machine") or {}
    if m:
        lines += ["machine: " + ", ".join(f"{k} {v}" for k, v in m.items()), ""]
    lines += ["| group | figure | value | target | met |", "| --- | --- | --- | --- | --- |"]
    for f in s["figures"]:
        met = {True: "yes", False: "**no**", None: ""}[f["met"]]
        lines.append(f"| {f['group']} | {f['figure']} | {f['shown']} | {f['target'] or ''} | {met} |")
    if s["workers_table"]:
        lines += ["", "Workers sweep (issue 11): wrk, req/s, latency in ms, scaling against the fewest workers",
                  "", "| model | body | c | workers | req/s | p50 | p99 | ÷ first | errors |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in s["workers_table"]:
            lines.append(f"| {r['model']} | {r['body']} | {r['c']} | {r['workers']} | {_f(r['req_s'], '{:,.0f}')} | "
                         f"{_f(r['p50_ms'], '{:.2f}')} | {_f(r['p99_ms'], '{:.2f}')} | {_f(r['scale'], '{:.2f}')} | "
                         f"{r.get('errors', '')} |")
    lines += ["", "| step | status | seconds | cap s |", "| --- | --- | ---: | ---: |"]
    for st in s["steps"]:
        lines.append(f"| {st['name']} | {st['status']} | {st['seconds']:.0f} | {st['cap_s']:.0f} |")
    if "seconds" in s:
        lines += ["", f"session: {s['seconds']:.0f} s of a {s['budget_s']:.0f} s budget"]
    return "\n".join(lines) + "\n"


def _f(value, fmt: str) -> str:
    return "" if value is None else fmt.format(value)


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not written (the step did not run or got no figure) or cut short
        return None


def _tests(path: Path) -> dict | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    not_passed = [f"{c.get('name')}: {c[0].tag}" for c in suite.iter("testcase")
                  if len(c) and c[0].tag in ("failure", "error")]
    return dict(counts, not_passed=not_passed)


_VARIANT = re.compile(r"^sm_(\d+) (\S+) \(triton ([^)]+)\): (.*)$")


def _compile_report(path: Path) -> list[dict]:
    """One entry per `sm_NN variant (triton X): ...` line of `python -m loopserve.kernels.aot`."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    variants = []
    for line in lines:
        m = _VARIANT.match(line.strip())
        if not m:
            continue
        regs = re.search(r"Used (\d+) registers", m[4])
        spills = re.search(r"(\d+) bytes spill stores", m[4])
        variants.append({"arch": m[1], "variant": m[2], "triton": m[3],
                         "registers": int(regs[1]) if regs else None,
                         "spill_bytes": int(spills[1]) if spills else 0, "report": m[4]})
    return variants
