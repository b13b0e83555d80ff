"""The `loopserve` command."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loopserve", description="A closed-loop model server.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="build the demo model, serve it, and drive traffic through it")
    demo.add_argument("--workdir", default="demo-run", help="where the demo writes its model repository")
    demo.add_argument("--seconds", type=float, default=5.0, help="how long to drive traffic")
    demo.add_argument("--concurrency", type=int, default=64, help="concurrent clients")

    args = parser.parse_args(argv)
    if args.command == "demo":
        from loopserve.demo import run_demo

        return run_demo(args.workdir, args.seconds, args.concurrency)
    return 2


if __name__ == "__main__":
    sys.exit(main())
