"""`loopserve train CONFIG [--nproc N] [--quiet] [--json]`: train, export, gate and publish a model.

With `--nproc N` (N > 1) the command starts itself again under `torchrun` with N local
processes (data-parallel); running it under `torchrun` directly works the same way.
Exit status: 0 published, 1 a gate failed (the version is set aside under `rejected/`), 2 an
error (bad config, exports that disagree, ...).
"""

from __future__ import annotations

import argparse
import os
import sys


def _print_result(result, as_json: bool) -> None:
    import msgspec

    if as_json:
        print(msgspec.json.encode(result).decode())
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    state = "published" if result.published else "[red]rejected by its gates[/]"
    console.print(f"{result.model_name} version {result.version} {state}: {result.version_dir}")
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key in ("model_dir", "onnx", "torchscript", "profile", "gate_report", "run_id", "data_snapshot",
                "registered_version", "world_size", "rows_train", "rows_validation"):
        value = getattr(result, key)
        if value is not None:
            table.add_row(key, str(value))
    table.add_row("seconds", f"{result.seconds:.1f}")
    for k, v in result.metrics.items():
        table.add_row(k, f"{v:.6g}")
    console.print(table)
    for reason in result.gate_failures:
        console.print(f"[red]gate failed:[/] {reason}")


def _run(args: argparse.Namespace) -> int:
    from loopserve.errors import LoopserveError

    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        from loopserve.training.distributed import launch

        forwarded = ["loopserve.cli", "train", args.config] + (["--quiet"] if args.quiet else []) \
            + (["--json"] if args.json else []) + (["--store", args.store] if args.store else [])
        return launch(args.nproc, forwarded)
    try:
        import msgspec

        from loopserve.training import load_train_config, train

        config = load_train_config(args.config)
        if args.store:
            config = msgspec.structs.replace(config, store=args.store)
        result = train(config, quiet=args.quiet)
    except LoopserveError as e:
        print(f"loopserve train: {e}", file=sys.stderr)
        return 2
    if result is None:  # a non-zero rank under torchrun: rank 0 reports
        return 0
    _print_result(result, args.json)
    return 0 if result.published else 1


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model from a config: export, check, gate and publish it")
    p.add_argument("config", metavar="CONFIG", help="train config (YAML, TOML or JSON)")
    p.add_argument("--nproc", type=int, default=1, help="data-parallel processes on this machine (via torchrun)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the TrainResult as JSON")
    p.add_argument("--store", metavar="DIR|URL", help="the store, a directory or a postgresql:// URL "
                   "(overrides the config's `store`)")
    p.set_defaults(handler=_run)
