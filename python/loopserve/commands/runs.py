"""`loopserve runs list | show ID | compare ID ID...`: tracked runs as rich tables."""

from __future__ import annotations

import argparse

from loopserve.commands._common import add_store_option, console, fmt, store_command


def code_cell(run) -> str:
    if run.code.git_sha is None:
        return "-"
    return run.code.git_sha[:10] + ("+dirty" if run.code.git_dirty else "")


def _list(args: argparse.Namespace, store) -> int:
    from rich.table import Table

    from loopserve.tracking import list_runs

    runs = list_runs(args.experiment, store=store, limit=args.limit)
    table = Table(title=f"runs{' of ' + args.experiment if args.experiment else ''} ({len(runs)})")
    for column in ("id", "experiment", "status", "started (UTC)", "code", "data", "metrics"):
        table.add_column(column, overflow="fold")
    for r in runs:
        status = {"finished": "green", "failed": "red"}.get(r.status, "yellow")
        metrics = ", ".join(f"{k}={fmt(v)}" for k, v in list(r.metrics.items())[:4])
        table.add_row(r.id, r.experiment, f"[{status}]{r.status}[/]", r.start_time[:19].replace("T", " "),
                      code_cell(r), r.data_snapshot or "-", metrics or "-")
    console().print(table)
    return 0


def _show(args: argparse.Namespace, store) -> int:
    from rich.table import Table

    from loopserve.tracking import get_run, metric_history

    r = get_run(args.run_id, store=store)
    out = console()
    info = Table(title=f"run {r.id}", show_header=False)
    info.add_column("field", style="bold")
    info.add_column("value", overflow="fold")
    for field, value in (("experiment", r.experiment), ("status", r.status), ("error", r.error),
                         ("started", r.start_time), ("ended", r.end_time), ("data snapshot", r.data_snapshot),
                         ("entrypoint", r.entrypoint), ("git sha", r.code.git_sha), ("git dirty", r.code.git_dirty),
                         ("python", r.python), ("platform", r.platform), ("command", " ".join(r.command)),
                         ("cwd", r.cwd), ("packages", ", ".join(f"{k} {v}" for k, v in r.packages.items()))):
        info.add_row(field, fmt(value))
    out.print(info)
    if r.params:
        params = Table(title="params")
        params.add_column("param")
        params.add_column("value", overflow="fold")
        for k, v in r.params.items():
            params.add_row(k, fmt(v))
        out.print(params)
    if r.metrics:
        metrics = Table(title="metrics")
        for column in ("metric", "final", "steps", "min", "max"):
            metrics.add_column(column)
        for k, v in r.metrics.items():
            values = [p.value for p in metric_history(r.id, k, store=store)]
            metrics.add_row(k, fmt(v), str(len(values)), fmt(min(values)), fmt(max(values)))
        out.print(metrics)
    if r.tags:
        out.print("tags: " + ", ".join(f"{k}={v}" for k, v in r.tags.items()))
    for a in r.artifacts:
        out.print(f"artifact {a.name}  {a.size} bytes  sha256 {a.sha256}")
    return 0


def _compare(args: argparse.Namespace, store) -> int:
    from rich.table import Table

    from loopserve.tracking import compare_runs

    c = compare_runs(args.run_ids, store=store)
    table = Table(title=f"{len(c.runs)} runs compared (differences in yellow)")
    table.add_column("")
    table.add_column("key")
    for r in c.runs:
        table.add_column(r.id, overflow="fold")
    for label, values in (("experiment", [r.experiment for r in c.runs]), ("status", [r.status for r in c.runs]),
                          ("code", [code_cell(r) for r in c.runs]), ("data", [r.data_snapshot for r in c.runs])):
        table.add_row("", label, *[fmt(v) for v in values])
    table.add_section()
    for section, rows, differing in (("param", c.params, c.differing_params),
                                     ("metric", c.metrics, c.differing_metrics)):
        for key, values in rows.items():
            diff = key in differing
            table.add_row("≠" if diff else "", f"{section} {key}", *[fmt(v) for v in values],
                          style="bold yellow" if diff else None)
        table.add_section()
    console().print(table)
    return 0


def register(subparsers) -> None:
    runs = subparsers.add_parser("runs", help="tracked training runs: list, show, compare")
    sub = runs.add_subparsers(dest="runs_command", required=True)
    p = sub.add_parser("list", help="runs, newest first")
    p.add_argument("--experiment", "-e", help="only runs of this experiment")
    p.add_argument("--limit", type=int, default=50, help="at most this many runs (default 50)")
    add_store_option(p)
    p.set_defaults(handler=store_command("loopserve runs list")(_list))
    p = sub.add_parser("show", help="one run: params, metrics, tags, artifacts, code and environment")
    p.add_argument("run_id", metavar="ID", help="a run id or a unique prefix of it")
    add_store_option(p)
    p.set_defaults(handler=store_command("loopserve runs show")(_show))
    p = sub.add_parser("compare", help="params and final metrics side by side, differences highlighted")
    p.add_argument("run_ids", metavar="ID", nargs="+", help="run ids (or unique prefixes)")
    add_store_option(p)
    p.set_defaults(handler=store_command("loopserve runs compare")(_compare))
