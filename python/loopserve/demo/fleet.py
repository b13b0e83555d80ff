"""The closed-loop demo run by a fleet on this machine (`loopserve demo --replicas 3`): N server
processes, one port and one feedback spill directory each, sharing one lifecycle store (the
registry they all follow); the traffic spread round-robin over them; the pipeline watching the
fleet's merged view (loopserve.fleet) and reading every replica's spill directory.

The store is on PostgreSQL when a server can be started here (loopserve.store.local_postgres,
Debian's `postgresql`), else SQLite in the work directory, which processes on one machine can
share too; the demo says which.
"""

from __future__ import annotations

from pathlib import Path

from loopserve.demo.setup import MODEL, Replica

SPILL_GLOB = "feedback/replica-*"  # what the fleet's pipeline reads: every replica's spill directory


class SharedStore:
    """The demo's lifecycle store: `location` is what every config names (a directory relative
    to the work directory, or a postgresql:// URL whose blobs live in the work directory)."""

    def __init__(self, workdir: Path, replicas: int, echo=print):
        from loopserve.store.local_postgres import LocalPostgres, PostgresUnavailable

        self.postgres = None
        self.location, self.kind = "store", "SQLite"
        self.path = workdir / "store"  # what the demo itself opens (Timeline, the summary)
        if replicas == 1:
            return
        try:
            self.postgres = LocalPostgres()
            self.location = f"{self.postgres.create_database('loopserve')}?dir={workdir / 'store'}"
            self.kind = "PostgreSQL"
            self.path = self.location
            echo(f"lifecycle store: PostgreSQL on 127.0.0.1:{self.postgres.port} (registry, runs, data catalog), "
                 f"blobs in {workdir / 'store'}; the {replicas} replicas and the pipeline share it")
        except Exception as e:  # noqa: BLE001  # no server binaries, no psycopg, or it would not start
            if self.postgres is not None:
                self.postgres.stop()
                self.postgres = None
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            if not isinstance(e, (PostgresUnavailable, ImportError)):
                reason = f"{type(e).__name__}: {reason}"
            echo(f"lifecycle store: SQLite in {workdir / 'store'}, shared by the {replicas} replicas on this "
                 f"machine (PostgreSQL could not be started: {reason})")

    def close(self) -> None:
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None

    def __enter__(self) -> "SharedStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def replicas_of(port: int, replicas: int) -> list[Replica]:
    """The single server on `port`, or `replicas` of them on port, port+1, ... (one front-end
    process each: on one machine the replicas are the processes)."""
    if replicas == 1:
        return [Replica(port)]
    return [Replica(port + i, f"server-{i + 1}.yaml", f"feedback/replica-{i + 1}", replicas, "1")
            for i in range(replicas)]


def urls(replicas: list[Replica]) -> list[str]:
    return [f"http://127.0.0.1:{r.port}" for r in replicas]


def view_of(replicas: list[Replica]):
    """What the demo's timeline reads: the server, or the fleet merged (as the pipeline does)."""
    from loopserve.fleet import FleetView
    from loopserve.pipeline.server_view import ServerView

    if len(replicas) == 1:
        return ServerView(urls(replicas)[0], MODEL)
    return FleetView(urls(replicas), MODEL)


def verdicts_alone(replicas: list[Replica], windows: int = 3) -> dict[str, list[str]]:
    """Each replica's own verdicts on its newest closed drift windows (what it would decide alone)."""
    from loopserve.pipeline.server_view import ServerUnavailable, ServerView

    out = {}
    for url in urls(replicas):
        try:
            out[url] = [f"{w['verdict']} ({w['rows']} rows)" for w in ServerView(url, MODEL).drift(windows)["windows"]]
        except ServerUnavailable as e:
            out[url] = [f"unavailable: {e}"]
    return out


def serving(replicas: list[Replica]) -> dict[str, dict]:
    """Each replica's traffic weights now, by version."""
    from loopserve.pipeline.server_view import ServerUnavailable, ServerView

    out = {}
    for url in urls(replicas):
        try:
            out[url] = {str(v): round(w, 3) for v, w in ServerView(url, MODEL).traffic()["weights"].items()}
        except ServerUnavailable as e:
            out[url] = {"unavailable": str(e)}
    return out


def outcome_from_store(store_path, features, feature_names: list[str], replicas: list[Replica]) -> dict:
    """The pipeline's runs and the version in production at the end; where the promoted version's
    training and holdout rows came from: each found by its exact inputs in the live stream, whose
    row r went to replica r mod n; and how many were read twice."""
    import numpy as np

    from loopserve.demo.scenario import stream_rows_of
    from loopserve.pipeline.records import PipelineRecords
    from loopserve.registry import current_version
    from loopserve.store import Store

    with Store(store_path) as store:
        runs = PipelineRecords(store).runs(MODEL, limit=20)
        out = {"production at the end": current_version(MODEL, "production", store=store),
               "pipeline runs": [f"{run.status}: {run.outcome}" for run in reversed(runs)]}
        promoted = [run for run in runs if run.status == "promoted"]
        if not promoted:
            return out
        collect = next(step.detail for step in promoted[0].steps if step.step == "collect")
        rows = stream_rows_of([collect["train_snapshot"], collect["holdout_snapshot"]], features, feature_names, store)
    found = rows[rows >= 0]
    by_replica = np.bincount(found % len(replicas), minlength=len(replicas))
    return out | {"retrained on rows by replica": {url: int(n) for url, n in zip(urls(replicas), by_replica)},
                  "retrained on rows read twice": int(len(found) - len(np.unique(found))),
                  "retrained on rows not in the stream": int(np.count_nonzero(rows < 0))}
