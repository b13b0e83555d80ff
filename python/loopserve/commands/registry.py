"""`loopserve registry register | list | show | alias | rollback | history | materialize`."""

from __future__ import annotations

import argparse

from loopserve.commands._common import add_store_option, console, fmt, store_command


def _pairs(kind: str, items: list[str] | None, number: bool = False) -> dict:
    from loopserve.registry import RegistryError

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RegistryError(f"invalid --{kind} {item!r}: expected KEY=VALUE")
        if number:
            try:
                out[key] = float(value)
            except ValueError:
                raise RegistryError(f"invalid --{kind} {item!r}: {value!r} is not a number") from None
        else:
            out[key] = value
    return out


def _register(args: argparse.Namespace, store) -> int:
    from loopserve.registry import register_model

    v = register_model(args.name, args.path, run_id=args.run, data_snapshot=args.data, parent_version=args.parent,
                       metrics=_pairs("metric", args.metric, number=True), tags=_pairs("tag", args.tag),
                       description=args.description, alias=args.alias, store=store)
    aliases = f" ({', '.join(v.aliases)})" if v.aliases else ""
    console().print(f"registered {v.name} version {v.version}{aliases}: {len(v.artifacts)} file(s), {v.size} bytes, "
                    f"content {v.content_digest[:12]}")
    return 0


def _list(args: argparse.Namespace, store) -> int:
    from rich.table import Table

    from loopserve.registry import list_models, list_versions

    if args.name is None:
        table = Table(title="registered models")
        for column in ("model", "versions", "latest", "aliases", "created (UTC)"):
            table.add_column(column)
        for m in list_models(store=store):
            table.add_row(m.name, str(m.versions), str(m.latest_version),
                          ", ".join(f"{a}→{v}" for a, v in m.aliases.items()) or "-", m.created_at[:19])
    else:
        table = Table(title=f"versions of {args.name}")
        for column in ("version", "aliases", "created (UTC)", "run", "data", "parent", "files", "metrics"):
            table.add_column(column, overflow="fold")
        for v in list_versions(args.name, store=store):
            table.add_row(str(v.version), ", ".join(v.aliases) or "-", v.created_at[:19], v.run_id or "-",
                          v.data_snapshot or "-", fmt(v.parent_version), str(len(v.artifacts)),
                          ", ".join(f"{k}={fmt(x)}" for k, x in v.metrics.items()) or "-")
    console().print(table)
    return 0


def _show(args: argparse.Namespace, store) -> int:
    from rich.table import Table

    from loopserve.registry import lineage, parse_ref

    name, ref = parse_ref(args.ref, default="latest")
    line = lineage(name, ref, store=store)
    v = line.version
    out = console()
    info = Table(title=f"{v.name} version {v.version}", show_header=False)
    info.add_column("field", style="bold")
    info.add_column("value", overflow="fold")
    rows = [("aliases", ", ".join(v.aliases) or "-"), ("created", v.created_at), ("description", v.description),
            ("run", v.run_id), ("data snapshot", line.data_snapshot),
            ("parents", " ← ".join(str(p.version) for p in line.parents) or "-"),
            ("content sha256", v.content_digest), ("size", f"{v.size} bytes")]
    if line.run is not None:
        r = line.run
        rows += [("run experiment", r.experiment), ("run status", r.status),
                 ("run code", (r.code.git_sha or "-") + (" (dirty)" if r.code.git_dirty else "")),
                 ("run params", ", ".join(f"{k}={fmt(x)}" for k, x in r.params.items()) or "-"),
                 ("run metrics", ", ".join(f"{k}={fmt(x)}" for k, x in r.metrics.items()) or "-")]
    rows += [(f"metric {k}", fmt(x)) for k, x in v.metrics.items()]
    rows += [(f"tag {k}", x) for k, x in v.tags.items()]
    for field, value in rows:
        info.add_row(field, fmt(value))
    out.print(info)
    files = Table(title="artifacts")
    for column in ("path", "size", "sha256"):
        files.add_column(column, overflow="fold")
    for a in v.artifacts:
        files.add_row(a.path, str(a.size), a.sha256)
    out.print(files)
    return 0


def _alias(args: argparse.Namespace, store) -> int:
    from loopserve.registry import set_alias

    event = set_alias(args.name, args.alias, args.version, reason=args.reason, store=store)
    if event is None:
        console().print(f"{args.name}: {args.alias} already points at version {args.version}")
    else:
        was = f" (was {event.previous_version})" if event.previous_version is not None else ""
        console().print(f"{args.name}: {args.alias} → version {event.version}{was}")
    return 0


def _rollback(args: argparse.Namespace, store) -> int:
    from loopserve.registry import rollback

    e = rollback(args.name, args.alias, reason=args.reason, store=store)
    console().print(f"{args.name}: {args.alias} rolled back to version {e.version} (was {e.previous_version})")
    return 0


def _history(args: argparse.Namespace, store) -> int:
    from rich.table import Table

    from loopserve.registry import alias_at, alias_history
    from loopserve.tracking.times import parse_time

    out = console()
    if args.at is not None:
        moment = parse_time(args.at)
        aliases = [args.alias] if args.alias else sorted({e.alias for e in alias_history(args.name, store=store)})
        table = Table(title=f"aliases of {args.name} at {moment}")
        table.add_column("alias")
        table.add_column("version")
        for alias in aliases:
            table.add_row(alias, fmt(alias_at(args.name, alias, moment, store=store)))
        out.print(table)
        return 0
    table = Table(title=f"alias history of {args.name}" + (f" ({args.alias})" if args.alias else ""))
    for column in ("time (UTC)", "alias", "action", "version", "previous", "actor", "reason"):
        table.add_column(column, overflow="fold")
    for e in alias_history(args.name, args.alias, store=store):
        table.add_row(e.set_at, e.alias, e.action, str(e.version), fmt(e.previous_version), fmt(e.actor),
                      fmt(e.reason))
    out.print(table)
    return 0


def _materialize(args: argparse.Namespace, store) -> int:
    from loopserve.registry import materialize, parse_ref

    name, ref = parse_ref(args.ref, default="latest")
    print(materialize(name, ref, dest_dir=args.dest, store=store))
    return 0


def register(subparsers) -> None:
    reg = subparsers.add_parser("registry", help="the model registry: versions, aliases, lineage")
    sub = reg.add_subparsers(dest="registry_command", required=True)

    def command(name: str, handler, **kw) -> argparse.ArgumentParser:
        p = sub.add_parser(name, **kw)
        add_store_option(p)
        p.set_defaults(handler=store_command(f"loopserve registry {name}")(handler))
        return p

    p = command("register", _register, help="register a file or directory as the model's next version")
    p.add_argument("name", metavar="NAME")
    p.add_argument("path", metavar="PATH", nargs="+", help="artifact file(s) or directory")
    p.add_argument("--run", help="the tracked run that produced it (id or unique prefix)")
    p.add_argument("--data", help="the data snapshot it was trained on (default: the run's)")
    p.add_argument("--parent", type=int, metavar="V", help="the version it was derived from")
    p.add_argument("--alias", metavar="A", help="point this alias at the new version")
    p.add_argument("--description")
    p.add_argument("--tag", action="append", metavar="KEY=VALUE")
    p.add_argument("--metric", action="append", metavar="KEY=NUMBER")
    p = command("list", _list, help="models, or the versions of one model")
    p.add_argument("name", metavar="NAME", nargs="?")
    p = command("show", _show, help="one version with its lineage (NAME, NAME@VERSION or NAME@ALIAS)")
    p.add_argument("ref", metavar="NAME[@REF]")
    p = command("alias", _alias, help="point an alias at a version (recorded in the history)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("alias", metavar="ALIAS")
    p.add_argument("version", metavar="VERSION", help="a version number (or another alias)")
    p.add_argument("--reason")
    p = command("rollback", _rollback, help="move an alias back to the version it held before")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--alias", default="production", help="default: production")
    p.add_argument("--reason")
    p = command("history", _history, help="alias moves; with --at, which version each alias held then")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--alias", metavar="A")
    p.add_argument("--at", metavar="TIMESTAMP", help="ISO-8601 (UTC unless an offset is given) or unix seconds")
    p = command("materialize", _materialize, help="write a version's verified artifacts to a directory")
    p.add_argument("ref", metavar="NAME[@REF]")
    p.add_argument("--dest", metavar="DIR", help="default: a cache directory under the store root")
