"""`loopserve drift MODEL --replicas ...`: the fleet's drift and live accuracy, one merged window per version."""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import msgspec

ENV_VAR = "LOOPSERVE_REPLICAS"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("drift", help="drift and live accuracy of a model across replicas, merged per version")
    p.add_argument("model")
    p.add_argument("--replicas", default=os.environ.get(ENV_VAR, "http://127.0.0.1:8000"),
                   help="comma-separated base URLs and/or dns://NAME:PORT (a headless Service); "
                        f"default ${ENV_VAR}, else http://127.0.0.1:8000")
    p.add_argument("--windows", type=int, default=5, help="the last N windows per version (default 5)")
    p.add_argument("--json", action="store_true", help="print the merged reports as JSON")
    p.set_defaults(handler=_drift)


def _drift(args) -> int:
    from loopserve.errors import LoopserveError
    from loopserve.fleet import FleetView

    view = FleetView(args.replicas, args.model)
    try:
        replicas = view.replicas()
        reports = view.drift_by_version(args.windows)
        feedback = view.feedback()
    except LoopserveError as e:
        print(f"loopserve drift: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(msgspec.json.encode({"replicas": replicas, "drift": reports, "feedback": feedback,
                                   "unreachable": view.unreachable}).decode())
        return 0
    live = {str(v["version"]): v for v in feedback["versions"]}
    answered = len(replicas) - len(view.unreachable)
    print(f"model {args.model}: {answered}/{len(replicas)} replicas answered")
    for url, why in view.unreachable.items():
        print(f"  unreachable {url}: {why}")
    for version in sorted(set(reports) | set(live), key=int):
        print(f"version {version}")
        if version in live:
            c = live[version]["cumulative"]
            accuracy = "-" if c["accuracy"] is None else f"{c['accuracy']:.3f}"
            print(f"  live accuracy {accuracy} over {c['labels']} labels ({live[version]['replicas']} replicas)")
        for w in reports.get(version, {}).get("windows", []):
            span = f"{_clock(w['start'])}-{_clock(w['end'])}"
            state = "closed" if w["closed"] else "open"
            drifted = f" ({', '.join(w['drifted_features'])})" if w["drifted_features"] else ""
            print(f"  window {span} {state:<6} {w['rows']:>8} rows  {w['verdict']}{drifted}")
    return 0


def _clock(t: float) -> str:
    return datetime.datetime.fromtimestamp(t).strftime("%H:%M:%S")
