"""`loopserve reproduce NAME@VERSION`: re-run a version's recorded training and compare metrics."""

from __future__ import annotations

import argparse

from loopserve.commands._common import add_store_option, console, fmt, store_command


def _reproduce(args: argparse.Namespace, store) -> int:
    from rich.table import Table

    from loopserve.registry import parse_ref, reproduce

    name, ref = parse_ref(args.ref)
    if ref is None:
        from loopserve.registry import RegistryError

        raise RegistryError(f"invalid reference {args.ref!r}: expected NAME@VERSION or NAME@ALIAS")
    out = console()
    result = reproduce(name, ref, force=args.force, tolerance=args.tolerance, store=store)
    for warning in result.warnings:
        out.print(f"[bold red]WARNING[/]: {warning} (--force given: reproducing anyway)")
    table = Table(title=f"{name} version {result.version}: run {result.recorded_run.id} reproduced as "
                        f"{result.reproduced_run.id} (tolerance {result.tolerance:g} relative)")
    for column in ("metric", "recorded", "reproduced", "relative diff", ""):
        table.add_column(column)
    for m in result.metrics:
        table.add_row(m.name, repr(m.recorded), "-" if m.reproduced is None else repr(m.reproduced),
                      fmt(m.relative_difference), "[green]ok[/]" if m.ok else "[bold red]DIFFERS[/]")
    out.print(table)
    out.print("reproduced within tolerance" if result.ok else "[bold red]NOT reproduced[/]: metrics differ")
    return 0 if result.ok else 1


def register(subparsers) -> None:
    p = subparsers.add_parser("reproduce", help="re-run a model version's recorded training and compare metrics")
    p.add_argument("ref", metavar="NAME@VERSION", help="also NAME@ALIAS")
    p.add_argument("--force", action="store_true",
                   help="run even if the code is not the recorded clean git commit")
    p.add_argument("--tolerance", type=float, default=1e-6, help="relative tolerance per metric (default 1e-6)")
    add_store_option(p)
    p.set_defaults(handler=store_command("loopserve reproduce")(_reproduce))
