"""Registry operations per second on SQLite and on PostgreSQL, with 1, 2 and 4 writer processes.

    .venv/bin/python bench/store_registry.py [--quick] [--backend sqlite|postgresql ...] [--json results.json]

Each case runs N processes (spawn) against one fresh store, started together behind a barrier,
each doing one operation in a loop for a fixed time. The store is a temporary directory (SQLite,
WAL, synchronous=FULL) or a fresh database on a PostgreSQL server this script starts on loopback
(`LocalPostgres(durable=True)`: fsync and synchronous_commit on, so a commit is as durable as
SQLite's), with its blobs in a temporary directory:

- `commit` (the floor under any committed change): one write transaction inserting one row;
- `register`: `register_model` of a unique 1 KiB file (blob write + fsync + rename, then one
  transaction that takes the model's write lock);
- `set_alias`: move `production` between two versions (one transaction + history row);
- `get_version`: resolve `production` and read the version with its artifacts, tags, aliases;
- `current_version`: the one-lookup poll the server runs every second.

Reported: total operations per second over all processes, the ratio to `commit` on the same
backend with the same number of processes, and PostgreSQL ÷ SQLite for the same case (when both
ran). `bench/store.py` imports `run(quick)` (SQLite only).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

OPS = ("commit", "register", "set_alias", "get_version", "current_version")
WRITERS = (1, 2, 4)
MODEL = "bench"


def _setup(root: str) -> None:
    from loopserve.registry import register_model, set_alias
    from loopserve.store import Store

    with Store(root) as s, tempfile.TemporaryDirectory() as d:
        for k in (1, 2):
            f = Path(d) / "model.bin"
            f.write_bytes(bytes([k]) * 1024)
            register_model(MODEL, f, store=s)
        set_alias(MODEL, "production", 1, store=s)
        s.db.ensure_schema("CREATE TABLE IF NOT EXISTS bench_commits (id INTEGER PRIMARY KEY, worker INTEGER)")


def _worker(root: str, op: str, worker: int, seconds: float, barrier, results) -> None:
    from loopserve.registry import current_version, get_version, register_model, set_alias
    from loopserve.registry.schema import prepare
    from loopserve.store import Store, transaction

    with Store(root) as s, tempfile.TemporaryDirectory() as d:
        prepare(s)
        f = Path(d) / "model.bin"
        n = 0
        barrier.wait()
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            if op == "commit":
                with transaction(s.db):
                    s.db.execute("INSERT INTO bench_commits (worker) VALUES (?)", (worker,))
            elif op == "register":
                f.write_bytes(f"{worker}-{n}".encode().ljust(1024, b"."))
                register_model(MODEL, f, store=s)
            elif op == "set_alias":
                set_alias(MODEL, "production", 1 + (n + worker) % 2, store=s)
            elif op == "get_version":
                get_version(MODEL, "production", store=s)
            else:
                current_version(MODEL, "production", store=s)
            n += 1
        results.put((n, time.perf_counter() - start))


def measure(op: str, writers: int, seconds: float, backend: str = "sqlite", postgres=None) -> dict:
    """One case: `writers` processes doing `op` for `seconds` against a fresh store."""
    import uuid

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as d:
        root = str(Path(d) / "store")
        if backend == "postgresql":
            root = postgres.create_database(f"bench_{uuid.uuid4().hex[:10]}") + f"?dir={root}"
        _setup(root)
        barrier = ctx.Barrier(writers)
        results = ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(root, op, w, seconds, barrier, results))
                 for w in range(writers)]
        for p in procs:
            p.start()
        got = []
        while len(got) < len(procs):
            try:
                got.append(results.get(timeout=1))
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in procs):
                    for p in procs:
                        p.kill()
                    raise RuntimeError(f"a {op} worker on {backend} failed (its traceback is above)") from None
        for p in procs:
            p.join(60)
    ops = sum(n for n, _ in got)
    wall = max(t for _, t in got)
    return {"backend": backend, "op": op, "writers": writers, "ops": ops, "seconds": round(wall, 3),
            "ops_per_s": round(ops / wall, 1)}


def run(quick: bool = False, backends: tuple[str, ...] = ("sqlite",), writers: tuple[int, ...] = WRITERS) -> list[dict]:
    """Every operation on each backend with each number of processes, the backends interleaved case by
    case (so load on the machine hits both alike); each row has `ops_per_s` and `vs_commit`, and
    PostgreSQL rows `vs_sqlite` when SQLite ran too."""
    import contextlib

    seconds = 0.5 if quick else 3.0
    rows = []
    with contextlib.ExitStack() as stack:
        postgres = None
        if "postgresql" in backends:
            from loopserve.store.local_postgres import LocalPostgres

            postgres = stack.enter_context(LocalPostgres(durable=True))
        for n in writers:
            base = {b: measure("commit", n, seconds, b, postgres) for b in backends}
            for op in OPS:
                case = {b: base[b] if op == "commit" else measure(op, n, seconds, b, postgres) for b in backends}
                for b, row in case.items():
                    row["vs_commit"] = round(row["ops_per_s"] / base[b]["ops_per_s"], 3)
                    if b != "sqlite" and "sqlite" in case:
                        row["vs_sqlite"] = round(row["ops_per_s"] / case["sqlite"]["ops_per_s"], 3)
                    rows.append(row)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="0.5 s per case instead of 3 s")
    p.add_argument("--backend", action="append", choices=("sqlite", "postgresql"),
                   help="a backend to measure (repeatable; default both)")
    p.add_argument("--writers", type=int, action="append", help=f"processes per case (repeatable; default {WRITERS})")
    p.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = p.parse_args()
    from runinfo import machine

    info = machine()
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    rows = run(args.quick, tuple(args.backend or ("sqlite", "postgresql")), tuple(args.writers or WRITERS))
    print(f"{'backend':<11} {'op':<16} {'writers':>7} {'ops':>8} {'ops/s':>10} {'vs commit':>10} {'pg/sqlite':>10}")
    for r in rows:
        vs = f"{r['vs_sqlite']:>10.3f}" if "vs_sqlite" in r else f"{'':>10}"
        print(f"{r['backend']:<11} {r['op']:<16} {r['writers']:>7} {r['ops']:>8} {r['ops_per_s']:>10.1f} "
              f"{r['vs_commit']:>10.3f} {vs}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
