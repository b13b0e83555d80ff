"""A test-only entry point for the registry's crash tests: registers COUNT versions of model "m",
and tells the test where it is, so the test kills it at a known point instead of at a guessed time.

    python registry_crash_child.py STORE FILE WRITER COUNT [--pause STAGE MARKER]

Before each register it prints "registering K" (flushed) on stdout. With --pause it writes
MARKER and sleeps when the register reaches STAGE: "after_blobs" as the version's transaction is
about to begin (the blobs are stored), "before_commit" as that transaction is about to commit
(every row written). The pause wraps the registry's transaction here, in the test process, on
either store backend; the registry's own code has no hook for it.
"""

import argparse
import contextlib
import sys
import time
from pathlib import Path

from loopserve.registry import register
from loopserve.store import Store


def pause_at(stage: str, marker: Path) -> None:
    def pause() -> None:
        marker.write_text(stage)
        time.sleep(300)  # until the test's SIGKILL

    real = register.transaction

    @contextlib.contextmanager
    def transaction(db, *args, **kwargs):
        if stage == "after_blobs":
            pause()
        with real(db, *args, **kwargs) as tx:
            yield tx
            if stage == "before_commit":
                pause()

    register.transaction = transaction


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("file", type=Path)
    parser.add_argument("writer")
    parser.add_argument("count", type=int)
    parser.add_argument("--pause", nargs=2, metavar=("STAGE", "MARKER"))
    args = parser.parse_args()
    if args.pause:
        pause_at(args.pause[0], Path(args.pause[1]))
    with Store(args.store) as store:
        for k in range(args.count):
            args.file.write_bytes(f"{args.writer}-{k}".encode() * 1000)
            print(f"registering {k}", flush=True)
            register.register_model("m", args.file, tags={"writer": args.writer}, store=store)


if __name__ == "__main__":
    sys.exit(main())
