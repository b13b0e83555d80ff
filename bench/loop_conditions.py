"""The loop under real conditions: time from the change's onset to a promoted v2, and the share
of rows predicted after the change in the data v2 was trained and gated on, for three worlds
run side by side from the same v1 (the QUICK demo's sizes, 400 rows/s):

- data drift (the demo's case: inputs and fraud pattern change together, labels 1 s late; the
  drift trigger fires);
- concept drift only, labels 1 s late (the accuracy trigger fires on complete prediction-time
  windows);
- concept drift only, label delays log-normal with median 5 s (sigma 0.6), 20% never labelled.

Usage: .venv/bin/python bench/loop_conditions.py [--rounds N] [--json PATH]

Each world runs through the CLI (loopserve serve + loopserve pipeline watch) as the tests of
tests/test_loop_conditions.py do; the ratio column is onset-to-promotion against the data-drift
case of the same round.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runinfo import cpu_model, source_digest  # noqa: E402

CHANGE_AT = 3000  # live rows: 7.5 s into the traffic


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cases():
    from loopserve.datasets import LabelDelay
    from loopserve.demo.scenario import Loop, World

    retrain = {"min_rows": 3000, "max_rows": 20000, "holdout_fraction": 0.3, "wait_s": 60}
    canary = {"window_s": 60, "min_requests": 250, "min_labels": 250, "accuracy_margin": 0.01}
    # A run whose candidate fails its gates is followed by another 10 s later, on more rows (as the
    # demo's 30 s cooldown would): onset-to-promotion includes such retries.
    drift = {"drift_windows": 2, "cooldown_s": 10}

    def accuracy(label_wait_s):
        return {"drift_windows": 2, "accuracy_floor": 0.74, "accuracy_windows": 2, "min_labels": 150,
                "label_wait_s": label_wait_s, "cooldown_s": 10}

    common = dict(rows_per_s=400.0, retrain=retrain, canary=canary, max_seconds=150.0, poll_s=0.5)
    late = LabelDelay(median_s=5.0, sigma=0.6, never=0.2)
    return [
        ("data drift, labels 1 s late (the demo)",
         World(change_at=CHANGE_AT, data_drift=True, concept_drift=True), Loop(triggers=drift, **common)),
        ("concept drift only, labels 1 s late",
         World(change_at=CHANGE_AT, concept_drift=True), Loop(triggers=accuracy(1.5), **common)),
        ("concept drift only, labels median 5 s, 20% never",
         World(change_at=CHANGE_AT, concept_drift=True, label_delay=late), Loop(triggers=accuracy(11.0), **common)),
    ]


def measure(v1: Path, name: str, world, loop, sizes) -> dict:
    from loopserve.datasets import FEATURES
    from loopserve.demo.scenario import run_world, stream_rows_of
    from loopserve.store import Store

    work = Path(tempfile.mkdtemp(prefix="loop-conditions-"))
    try:
        shutil.copytree(v1, work, dirs_exist_ok=True)
        outcome = run_world(work, world, loop, sizes, free_port())
        promoted = next((r for r in outcome.runs if r.status == "promoted"), None)
        result = {"case": name, "failed requests": len(outcome.traffic.failed), "requests": outcome.traffic.sent,
                  "runs": [(r.status, r.reason, r.outcome) for r in outcome.runs], "onset_to_trigger_s": None,
                  "onset_to_promotion_s": None, "post_change_share": None, "training_rows": None}
        fired = next((d for d in outcome.decisions if d["fire"]), None)
        if fired is not None and outcome.onset is not None:
            result["onset_to_trigger_s"] = round(fired["at"] - outcome.onset, 1)
        if promoted is not None and outcome.onset is not None:
            result["onset_to_promotion_s"] = round(promoted.finished_at - outcome.onset, 1)
            collect = next(s for s in promoted.steps if s.step == "collect").detail
            with Store(work / "store") as store:
                rows = stream_rows_of([collect["train_snapshot"], collect["holdout_snapshot"]], outcome.features,
                                      list(FEATURES), store)
            result["training_rows"] = int(len(rows))
            result["post_change_share"] = float(np.mean(rows >= world.change_at))
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    from loopserve.demo import QUICK
    from loopserve.demo.scenario import prepare

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(f"machine: {cpu_model()}; source {source_digest()}")
    v1 = Path(tempfile.mkdtemp(prefix="loop-conditions-v1-"))
    results = []
    try:
        prepare(v1, QUICK)
        for round_ in range(args.rounds):
            for name, world, loop in cases():
                result = measure(v1, name, world, loop, QUICK) | {"round": round_}
                print(json.dumps(result), flush=True)
                results.append(result)
    finally:
        shutil.rmtree(v1, ignore_errors=True)
    print(f"\n{'case':52} {'onset->trigger s':>16} {'onset->promoted s':>17} {'x demo':>7} {'post-change':>11} "
          f"{'failed':>6}")
    baseline = [r["onset_to_promotion_s"] for r in results if r["case"].startswith("data drift")]
    for name, _, _ in cases():
        mine = [r for r in results if r["case"] == name]

        def median(key):
            values = [r[key] for r in mine if r[key] is not None]
            return statistics.median(values) if values else None

        ratios = [r["onset_to_promotion_s"] / b for r, b in zip(mine, baseline) if r["onset_to_promotion_s"] and b]
        promoted, trigger, share = median("onset_to_promotion_s"), median("onset_to_trigger_s"), median(
            "post_change_share")
        print(f"{name:52} {_f(trigger):>16} {_f(promoted):>17} "
              f"{_f(statistics.median(ratios) if ratios else None, 2):>7} "
              f"{'-' if share is None else f'{share:.1%}':>11} {sum(r['failed requests'] for r in mine):>6}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def _f(x, digits=1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
