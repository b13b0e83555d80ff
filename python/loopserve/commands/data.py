"""`loopserve data snapshot | list | show | schema | validate`: versioned data from the command line.

Heavy imports (pyarrow, rich) happen inside the handlers: the CLI imports every command module
to build its parser, and `loopserve serve` should not pay for them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from loopserve.commands._common import add_store_option, console, fmt, store_command

PROG = "loopserve data"


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="versioned data: snapshots, manifests, validation")
    sub = data.add_subparsers(dest="data_command", required=True)

    p = sub.add_parser("snapshot", help="snapshot a CSV, Parquet or .npz file into the store")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--name", help="a name for the snapshot (letters, digits, '.', '_', '-')")
    p.add_argument("--parent", metavar="ID", help="the snapshot this one derives from")
    add_store_option(p)
    p.set_defaults(handler=_snapshot)

    p = sub.add_parser("list", help="list the snapshots in the store")
    add_store_option(p)
    p.set_defaults(handler=_list)

    p = sub.add_parser("show", help="show a snapshot's manifest: schema, chunks, column statistics")
    p.add_argument("id", metavar="ID", help="snapshot id, unique id prefix or name")
    add_store_option(p)
    p.set_defaults(handler=_show)

    p = sub.add_parser("schema", help="infer a validation schema from a snapshot (YAML)")
    p.add_argument("id", metavar="ID", help="snapshot id, unique id prefix or name")
    p.add_argument("-o", "--output", metavar="FILE", help="write it to FILE (.yaml or .json) instead of stdout")
    add_store_option(p)
    p.set_defaults(handler=_schema)

    p = sub.add_parser("validate", help="validate a file against a schema or a reference snapshot")
    p.add_argument("path", metavar="PATH", help="CSV, Parquet or .npz file, or a snapshot id")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--schema", metavar="FILE", help="schema file (YAML, JSON or TOML)")
    how.add_argument("--against", metavar="ID", help="reference snapshot: its inferred schema and statistics")
    add_store_option(p)
    p.set_defaults(handler=_validate)


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@store_command(PROG)
def _snapshot(args: argparse.Namespace, store) -> int:
    from loopserve.data import snapshot

    info = snapshot(args.path, store=store, name=args.name, parent=args.parent)
    out = console()
    out.print(f"snapshot [bold]{info.id}[/]")
    out.print(f"  rows {info.rows}, {_mb(info.bytes)} in {info.chunks} chunks, "
              f"{info.chunks_reused} reused, {info.chunks - info.chunks_reused} new")
    if info.name or info.parent:
        out.print(f"  name {info.name or '-'}, parent {info.parent[:12] if info.parent else '-'}")
    return 0


@store_command(PROG)
def _list(args: argparse.Namespace, store) -> int:
    from rich.table import Table

    from loopserve.data import list_snapshots

    snapshots = list_snapshots(store)
    table = Table(title=f"data snapshots ({len(snapshots)})")
    for column in ("id", "name", "created (UTC)", "rows", "chunks", "size", "parent"):
        table.add_column(column, justify="right" if column in ("rows", "chunks", "size") else "left")
    for s in snapshots:
        table.add_row(s.short_id, s.name or "-", _when(s.created_at), str(s.rows), str(s.chunks), _mb(s.bytes),
                      s.parent[:12] if s.parent else "-")
    console().print(table)
    return 0


@store_command(PROG)
def _show(args: argparse.Namespace, store) -> int:
    from rich.table import Table

    from loopserve.data import read_manifest
    from loopserve.data.catalog import resolve

    info = resolve(store.db, args.id)
    m = read_manifest(info.id, store)
    out = console()
    out.print(f"snapshot [bold]{m.id}[/]")
    out.print(f"  name {info.name or '-'}, created {_when(info.created_at)} UTC, "
              f"parent {info.parent or '-'}")
    out.print(f"  rows {m.rows}, {_mb(m.bytes)} in {len(m.core.chunks)} chunks of {m.core.chunk_rows} rows "
              f"({m.core.format}); manifest blob {info.manifest_digest[:12]}")
    table = Table(title="columns")
    for column in ("column", "type", "count", "nulls", "NaN", "min", "max", "mean", "std", "distinct / top values"):
        table.add_column(column, overflow="fold")
    for col, s in zip(m.core.columns, m.stats):
        top = ""
        if s.kind == "categorical":
            top = (f"{s.distinct}: " if s.distinct is not None else "many: ") + \
                ", ".join(f"{v} ({c})" for v, c in s.top[:5])
        table.add_row(col.name, col.type, str(s.count), str(s.nulls), str(s.nans) if s.nans else "-",
                      fmt(s.min), fmt(s.max), fmt(s.mean), fmt(s.std), top or "-")
    out.print(table)
    return 0


@store_command(PROG)
def _schema(args: argparse.Namespace, store) -> int:
    from loopserve.data import dump_schema, infer_schema

    schema = infer_schema(args.id, store)
    text = dump_schema(schema, args.output)
    if args.output:
        print(f"schema of {len(schema.columns)} columns written to {args.output}")
    else:
        sys.stdout.write(text.decode())
    return 0


@store_command(PROG)
def _validate(args: argparse.Namespace, store) -> int:
    from rich.table import Table

    from loopserve.data import infer_schema, read_manifest, validate

    if args.against:
        reference = read_manifest(args.against, store)
        schema, source = infer_schema(reference), f"snapshot {reference.id[:12]}"
    else:
        reference, schema, source = None, args.schema, args.schema
    report = validate(args.path, schema, reference=reference, store=store)
    table = Table(title=f"validation of {args.path} against {source} ({report.rows} rows)")
    for column in ("", "column", "rule", "result"):
        table.add_column(column, overflow="fold")
    for c in report.checks:
        table.add_row("[green]ok[/]" if c.passed else "[red]FAIL[/]", c.column or "-", c.rule, c.message)
    out = console()
    out.print(table)
    failed = len(report.failures)
    if failed:
        out.print(f"[red]FAILED[/]: {failed} of {len(report.checks)} checks failed")
        for c in report.failures:
            print(f"  {c.message}", file=sys.stderr)
        return 1
    out.print(f"[green]passed[/]: all {len(report.checks)} checks")
    return 0
