"""`loopserve pipeline run | watch | status`: continuous training, in its own process."""

from __future__ import annotations

import argparse
import datetime
import sys

from loopserve.commands._common import add_store_option, console, fmt, store_command


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("pipeline", help="continuous training: retrain, gate, canary, promote or roll back")
    commands = parser.add_subparsers(dest="pipeline_command", required=True)

    run = commands.add_parser("run", help="run the pipeline once now")
    run.add_argument("config", help="pipeline config file (YAML, TOML or JSON)")
    run.add_argument("--reason", default="started by hand", help="why (recorded with the run)")
    run.set_defaults(handler=_run)

    roll_out = commands.add_parser("rollout", help="canary a registered version against production, then "
                                                   "promote it or roll it back")
    roll_out.add_argument("config", help="pipeline config file (YAML, TOML or JSON)")
    roll_out.add_argument("version", type=int, help="the registered version to roll out")
    roll_out.add_argument("--reason", default="rolled out by hand", help="why (recorded with the run)")
    roll_out.set_defaults(handler=_roll_out)

    watch = commands.add_parser("watch", help="read the server every poll_s and run the pipeline when a trigger fires")
    watch.add_argument("config", help="pipeline config file (YAML, TOML or JSON)")
    watch.add_argument("--for", dest="seconds", type=float, help="stop after this many seconds (default: never)")
    watch.add_argument("--metrics-port", type=int, help="serve the pipeline's Prometheus metrics on this port")
    watch.set_defaults(handler=_watch)

    status = commands.add_parser("status", help="recent pipeline runs and where each one is")
    status.add_argument("--model", help="only this model's runs")
    status.add_argument("--limit", type=int, default=10)
    status.add_argument("--decisions", action="store_true", help="also the latest trigger decisions")
    add_store_option(status)
    status.set_defaults(handler=_status)


def _with_pipeline(args, work) -> int:
    """Opens the pipeline of `args.config` in this process (at its lower CPU priority), runs
    `work(pipeline)`, and closes it; a bad config is a one-line error and status 2."""
    from loopserve.errors import LoopserveError
    from loopserve.logs import configure_logging
    from loopserve.pipeline.config import load_pipeline_config
    from loopserve.pipeline.runner import Pipeline, yield_to_serving

    configure_logging("info")
    try:
        config = load_pipeline_config(args.config)
        yield_to_serving(config)
        pipeline = Pipeline(config)
    except LoopserveError as e:
        print(f"loopserve pipeline: {e}", file=sys.stderr)
        return 2
    try:
        return work(pipeline)
    finally:
        pipeline.close()


def _run(args) -> int:
    from loopserve.errors import LoopserveError

    def run(pipeline) -> int:
        try:
            record = pipeline.run(args.reason)
        except LoopserveError as e:  # another live run holds the model's lease
            print(f"loopserve pipeline run: {e}", file=sys.stderr)
            return 2
        _print_runs([record])
        return 0 if record.status == "promoted" else 1

    return _with_pipeline(args, run)


def _roll_out(args) -> int:
    from loopserve.errors import LoopserveError

    def roll_out(pipeline) -> int:
        try:
            record = pipeline.roll_out(args.version, args.reason)
        except LoopserveError as e:
            print(f"loopserve pipeline rollout: {e}", file=sys.stderr)
            return 2
        _print_runs([record])
        return 0 if record.status == "promoted" else 1

    return _with_pipeline(args, roll_out)


def _watch(args) -> int:
    import time

    def watch(pipeline) -> int:
        if args.metrics_port is not None:
            from loopserve.pipeline.metrics import serve_metrics

            serve_metrics(pipeline.store.location, args.metrics_port)
        try:
            pipeline.watch(None if args.seconds is None else time.time() + args.seconds)
        except KeyboardInterrupt:
            pass
        return 0

    return _with_pipeline(args, watch)


@store_command("loopserve pipeline status")
def _status(args, store) -> int:
    from loopserve.pipeline.records import PipelineRecords

    records = PipelineRecords(store)
    _print_runs(records.runs(args.model, limit=args.limit))
    if args.decisions and args.model:
        from rich.table import Table

        table = Table(title=f"trigger decisions: {args.model}")
        for column in ("at", "fire", "reasons"):
            table.add_column(column)
        for d in records.decisions(args.model, limit=args.limit):
            table.add_row(_time(d["at"]), "yes" if d["fire"] else "no", "; ".join(d["reasons"]))
        console().print(table)
    return 0


def _print_runs(runs) -> None:
    from rich.table import Table

    out = console()
    if not runs:
        out.print("no pipeline runs")
        return
    for run in runs:
        table = Table(title=f"run {run.id} · {run.model} · {run.status} · started {_time(run.started_at)}",
                      caption=f"why: {run.reason}" + (f"\noutcome: {run.outcome}" if run.outcome else ""))
        for column in ("step", "status", "seconds", "detail"):
            table.add_column(column)
        for step in run.steps:
            seconds = "" if step.finished_at is None else f"{step.finished_at - step.started_at:.1f}"
            style = {"passed": "green", "failed": "red", "skipped": "dim"}.get(step.status, "yellow")
            table.add_row(step.step, f"[{style}]{step.status}[/{style}]", seconds, _detail(step.detail))
        out.print(table)


def _detail(detail: dict) -> str:
    if "error" in detail:
        return detail["error"][:160]
    if isinstance(detail.get("canary"), dict):  # the compare step
        c, p = detail["canary"], detail["production"]
        return (f"canary {c['requests']} req, {c['errors']} err, acc {fmt(c['accuracy'])}; "
                f"production acc {fmt(p['accuracy'])}")
    keys = ("rows", "registered_version", "weights", "production", "rejected", "rules_checked")
    return ", ".join(f"{k}={fmt(detail[k])}" for k in keys if k in detail)[:160]


def _time(t: float) -> str:
    return datetime.datetime.fromtimestamp(t).strftime("%H:%M:%S")
