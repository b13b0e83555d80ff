"""A test-only entry point for the registry's crash tests: registers COUNT versions of model "m",
and tells the test where it is, so the test kills it at a known point instead of at a guessed time.

    python registry_crash_child.py ROOT FILE WRITER COUNT [--pause STAGE MARKER]

Before each register it prints "registering K" (flushed) on stdout. With --pause it writes
MARKER and sleeps when the register reaches STAGE, seen through SQLite's statement trace (no
hook in the registry's code): "after_blobs" at the BEGIN of the version's transaction, once the
file's blob is in the store; "before_commit" at that transaction's COMMIT, every row written.
"""

import argparse
import hashlib
import sys
import time
from pathlib import Path

from loopserve.registry import register_model
from loopserve.store import Store


def pause_at(store: Store, stage: str, marker: Path, digest: str) -> None:
    wrote_version = False

    def trace(statement: str) -> None:
        nonlocal wrote_version
        sql = statement.lstrip().upper()
        reached = False
        if stage == "after_blobs" and sql.startswith("BEGIN"):
            reached = store.blobs.path(digest).exists()
        elif stage == "before_commit":
            wrote_version = wrote_version or sql.startswith("INSERT INTO REGISTRY_VERSIONS")
            reached = wrote_version and sql.startswith("COMMIT")
        if reached:
            marker.write_text(stage)
            time.sleep(300)  # until the test's SIGKILL

    store.db.set_trace_callback(trace)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("file", type=Path)
    parser.add_argument("writer")
    parser.add_argument("count", type=int)
    parser.add_argument("--pause", nargs=2, metavar=("STAGE", "MARKER"))
    args = parser.parse_args()
    with Store(args.root) as store:
        for k in range(args.count):
            content = f"{args.writer}-{k}".encode() * 1000
            args.file.write_bytes(content)
            if args.pause:
                pause_at(store, args.pause[0], Path(args.pause[1]), hashlib.sha256(content).hexdigest())
            print(f"registering {k}", flush=True)
            register_model("m", args.file, tags={"writer": args.writer}, store=store)


if __name__ == "__main__":
    sys.exit(main())
