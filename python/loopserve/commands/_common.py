"""What the store-backed subcommands share: the --store option, error reporting, tables."""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any, Callable

import msgspec


def add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", metavar="DIR|URL",
                        help="the store: a directory (SQLite) or a postgresql:// URL "
                             "(default: $LOOPSERVE_STORE, else ./.loopserve)")


def store_command(prog: str) -> Callable[[Callable[..., int]], Callable[[argparse.Namespace], int]]:
    """Wrap a handler(args, store) -> int: opens the store, reports LoopserveError as `prog: message`."""
    def wrap(handler: Callable[..., int]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(handler)
        def run(args: argparse.Namespace) -> int:
            from loopserve.errors import LoopserveError
            from loopserve.store import Store

            try:
                with Store(args.store) as store:
                    return handler(args, store)
            except LoopserveError as e:
                print(f"{prog}: {e}", file=sys.stderr)
                return 2
        return run
    return wrap


def console():
    from rich.console import Console

    return Console(highlight=False)


def fmt(value: Any) -> str:
    """A param or metric value for a table cell."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str):
        return value
    return msgspec.json.encode(value).decode()
