"""Registry operations per second, with 1 and 2 concurrent writer processes.

    .venv/bin/python bench/store_registry.py [--quick] [--json results.json]

Each case runs N processes (spawn) against one store in a fresh temporary directory, started
together behind a barrier, each doing one operation in a loop for a fixed time:

- `sqlite_commit` (the baseline): one BEGIN IMMEDIATE / INSERT / COMMIT with the store's own
  settings (WAL, synchronous=FULL), the floor under any committed change;
- `register`: `register_model` of a unique 1 KiB file (blob write + fsync + rename, then one
  transaction);
- `set_alias`: move `production` between two versions (one transaction + history row);
- `get_version`: resolve `production` and read the version with its artifacts, tags, aliases;
- `current_version`: the one-lookup poll the server runs every second.

Reported: total operations per second over all processes, and the ratio to `sqlite_commit` with
the same number of processes. `bench/store.py` imports `run(quick)`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

OPS = ("sqlite_commit", "register", "set_alias", "get_version", "current_version")
MODEL = "bench"


def _setup(root: Path) -> None:
    from loopserve.registry import register_model, set_alias
    from loopserve.store import Store, transaction

    with Store(root) as s, tempfile.TemporaryDirectory() as d:
        for k in (1, 2):
            f = Path(d) / "model.bin"
            f.write_bytes(bytes([k]) * 1024)
            register_model(MODEL, f, store=s)
        set_alias(MODEL, "production", 1, store=s)
        with transaction(s.db):
            s.db.execute("CREATE TABLE IF NOT EXISTS bench_commits (id INTEGER PRIMARY KEY, worker INTEGER)")


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
            if op == "sqlite_commit":
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


def measure(op: str, writers: int, seconds: float) -> dict:
    """One case: `writers` processes doing `op` for `seconds` against a fresh store."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "store"
        _setup(root)
        barrier = ctx.Barrier(writers)
        results = ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(str(root), op, w, seconds, barrier, results))
                 for w in range(writers)]
        for p in procs:
            p.start()
        got = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(60)
            if p.exitcode != 0:
                raise RuntimeError(f"{op} worker exited with {p.exitcode}")
    ops = sum(n for n, _ in got)
    wall = max(t for _, t in got)
    return {"op": op, "writers": writers, "ops": ops, "seconds": round(wall, 3), "ops_per_s": round(ops / wall, 1)}


def run(quick: bool = False) -> list[dict]:
    """Every operation with 1 and 2 processes; each row has `ops_per_s` and `vs_sqlite_commit`."""
    seconds = 0.5 if quick else 3.0
    rows = []
    for writers in (1, 2):
        base = measure("sqlite_commit", writers, seconds)
        for op in OPS:
            row = base if op == "sqlite_commit" else measure(op, writers, seconds)
            row["vs_sqlite_commit"] = round(row["ops_per_s"] / base["ops_per_s"], 3)
            rows.append(row)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="0.5 s per case instead of 3 s")
    p.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = p.parse_args()
    from runinfo import machine

    info = machine()
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    rows = run(args.quick)
    print(f"{'op':<16} {'writers':>7} {'ops':>8} {'ops/s':>10} {'vs sqlite_commit':>17}")
    for r in rows:
        print(f"{r['op']:<16} {r['writers']:>7} {r['ops']:>8} {r['ops_per_s']:>10.1f} {r['vs_sqlite_commit']:>17.3f}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
