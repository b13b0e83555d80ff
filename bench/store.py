"""Data snapshot throughput: writing a table into the store as a snapshot and loading it back,
against writing and reading the same table as Parquet with pyarrow, in the same run.

The table: 4 float64 columns, 1 int64 column and a string column ("user-<n>", n < 1e6), about
55 bytes a row; `--gb` sets its in-memory size (Arrow buffers), `--quick` is 0.1 GB.
MB/s is that in-memory size over the wall time.

- snapshot write: `data.snapshot(table)` into an empty store: canonical chunks serialized,
  sha256-hashed, written to a temporary file, fsynced and renamed, statistics computed, the
  manifest and the catalog row written. Parquet write: `pq.write_table` (snappy), and the
  same plus an fsync of the file (a durable write, as the snapshot's is).
- snapshot read: `data.load_snapshot(id)` (every chunk's sha256 checked) against
  `pq.read_table`, alternating, twice each: both from the page cache.
- re-snapshot: the same table again into the same store (every chunk already there).

Rounds alternate snapshot and Parquet; the best round of each is reported. At the end, if
bench/store_registry.py exists, its registry figures are printed too.

    .venv/bin/python bench/store.py [--quick] [--gb 1.0] [--rounds N] [--dir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loopserve import data
from loopserve.data.chunks import CHUNK_ROWS

from runinfo import machine

ROW_BYTES = 55  # 5 x 8 bytes + a 4-byte offset + ~11 bytes of string ("user-123456")


def make_table(gb: float, seed: int = 0) -> pa.Table:
    rows = int(gb * 1e9 / ROW_BYTES)
    rng = np.random.default_rng(seed)
    cols = {f"f{i}": rng.normal(size=rows) for i in range(4)}
    cols["id"] = np.arange(rows, dtype=np.int64)
    users = pc.cast(pa.array(rng.integers(0, 1_000_000, rows)), pa.string())
    cols["user"] = pc.binary_join_element_wise("user-", users, "")
    return pa.table(cols)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def one_round(table: pa.Table, work: Path) -> dict:
    store = work / "store"
    shutil.rmtree(store, ignore_errors=True)
    r = {}
    r["snapshot_write_s"], info = timed(lambda: data.snapshot(table, store=store))
    r["resnapshot_s"], again = timed(lambda: data.snapshot(table, store=store))
    assert again.id == info.id and again.chunks_reused == again.chunks
    loaded = data.load_snapshot(info.id, store=store)
    assert loaded.equals(table), "the snapshot read back differs from the table"
    del loaded
    r["snapshot_disk_bytes"] = info.bytes
    r["chunks"] = info.chunks

    path = work / "table.parquet"
    path.unlink(missing_ok=True)
    r["parquet_write_s"], _ = timed(lambda: pq.write_table(table, path))
    r["parquet_fsync_s"], _ = timed(lambda: fsync_file(path))
    r["parquet_disk_bytes"] = path.stat().st_size
    # Reads alternate, twice each, best kept: the first read after a write is often slowed by
    # the kernel's writeback and the allocator's first touch of fresh pages, for either format.
    reads = {"snapshot_read_s": lambda: data.load_snapshot(info.id, store=store),
             "parquet_read_s": lambda: pq.read_table(path)}
    for _ in range(2):
        for key, fn in reads.items():
            r[key] = min(r.get(key, float("inf")), timed(fn)[0])
    return r


def run(gb: float, rounds: int, work: Path) -> dict:
    t0 = time.perf_counter()
    table = make_table(gb)
    build_s = time.perf_counter() - t0
    size = table.nbytes
    results = [one_round(table, work) for _ in range(rounds)]
    best = {k: min(r[k] for r in results) for k in results[0]}
    mbs = lambda key: size / 1e6 / best[key]  # noqa: E731
    return {
        "gb": gb, "rows": table.num_rows, "table_bytes": size, "build_s": build_s, "rounds": rounds,
        "chunks": best["chunks"], "chunk_rows": CHUNK_ROWS,
        "snapshot_write_mb_s": mbs("snapshot_write_s"), "snapshot_read_mb_s": mbs("snapshot_read_s"),
        "resnapshot_mb_s": mbs("resnapshot_s"),
        "parquet_write_mb_s": mbs("parquet_write_s"),
        "parquet_write_fsync_mb_s": size / 1e6 / min(r["parquet_write_s"] + r["parquet_fsync_s"] for r in results),
        "parquet_read_mb_s": mbs("parquet_read_s"),
        "snapshot_disk_bytes": best["snapshot_disk_bytes"], "parquet_disk_bytes": best["parquet_disk_bytes"],
        "all_rounds": results,
    }


def print_results(r: dict) -> None:
    print(f"\n  table: {r['rows']:,} rows, {r['table_bytes'] / 1e9:.2f} GB in memory (4 float64, int64, string); "
          f"{r['chunks']} chunks of {r['chunk_rows']:,} rows; best of {r['rounds']} rounds")
    print(f"  on disk: snapshot {r['snapshot_disk_bytes'] / 1e9:.2f} GB (uncompressed Arrow IPC), "
          f"Parquet {r['parquet_disk_bytes'] / 1e9:.2f} GB (snappy)\n")
    print(f"  {'':<12} {'snapshot':>10} {'parquet':>10} {'ratio':>7}   (MB/s of in-memory table)")
    w, wf = r["snapshot_write_mb_s"], r["parquet_write_fsync_mb_s"]
    print(f"  {'write':<12} {w:>10.0f} {r['parquet_write_mb_s']:>10.0f} {w / r['parquet_write_mb_s']:>7.2f}")
    print(f"  {'write+fsync':<12} {w:>10.0f} {wf:>10.0f} {w / wf:>7.2f}   (parquet made durable too)")
    rd = r["snapshot_read_mb_s"]
    print(f"  {'read':<12} {rd:>10.0f} {r['parquet_read_mb_s']:>10.0f} {rd / r['parquet_read_mb_s']:>7.2f}")
    print(f"  {'re-snapshot':<12} {r['resnapshot_mb_s']:>10.0f} {'':>10} {'':>7}   (every chunk already stored)")
    print("  target: ratio >= 0.5 for write and read")


def print_registry(quick: bool) -> list[dict] | None:
    try:
        from store_registry import run as registry_run
    except ImportError:
        print("\n  (bench/store_registry.py not present: no registry figures)")
        return None
    try:
        rows = registry_run(quick)
    except Exception as e:  # another area's benchmark: its failure must not hide these figures
        print(f"\n  registry benchmark failed: {type(e).__name__}: {e}")
        return None
    print("\n  registry (bench/store_registry.py):")
    for row in rows:
        print("    " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 0.1 GB table")
    parser.add_argument("--gb", type=float, default=1.0, help="table size in GB (in memory)")
    parser.add_argument("--rounds", type=int, help="rounds (default 3 quick, 2 full)")
    parser.add_argument("--dir", help="where to write (default: a temporary directory)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    gb = 0.1 if args.quick else args.gb
    rounds = args.rounds or (3 if args.quick else 2)
    info = machine(pyarrow=pa.__version__, numpy=np.__version__)
    print("loopserve store benchmark" + (" (--quick)" if args.quick else ""))
    print(f"  {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable); python {info['python']}, "
          f"pyarrow {info['pyarrow']}, numpy {info['numpy']}")
    print(f"  sources {info['source_digest']} (sha256 of csrc/ and python/loopserve/)")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="loopserve-bench-") as tmp:
        print(f"  writing under {tmp} ({shutil.disk_usage(tmp).free / 1e9:.0f} GB free)")
        results = run(gb, rounds, Path(tmp))
    print_results(results)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "snapshot": results}, indent=1))
    registry = print_registry(args.quick)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "snapshot": results, "registry": registry}, indent=1))
        print(f"  results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
