"""What the UI's registry, runs and pipeline pages show, read from the lifecycle store.

Each function opens the store for one call (SQLite connections are per thread; the routes run
these in a worker thread) and returns plain JSON-ready data. A server with no store yet (no
loopserve.db under its root) shows empty pages rather than creating one.
"""

from __future__ import annotations

import msgspec

from loopserve.store import Store, store_root

RUN_FIELDS = ("id", "experiment", "status", "start_time", "end_time", "error", "data_snapshot", "entrypoint",
              "params", "metrics", "tags")


def has_store(root: str | None) -> bool:
    return (store_root(root) / "loopserve.db").is_file()


def registry_view(root: str | None) -> dict:
    """Every registered model: its versions with lineage (run, data snapshot, parent) and the
    full history of its aliases, oldest first."""
    from loopserve.registry import alias_history, list_models, list_versions

    if not has_store(root):
        return {"store": str(store_root(root)), "models": []}
    models = []
    with Store(root) as store:
        for summary in list_models(store=store):
            versions = []
            for v in list_versions(summary.name, store=store):
                versions.append({"version": v.version, "created_at": v.created_at, "run_id": v.run_id,
                                 "data_snapshot": v.data_snapshot, "parent_version": v.parent_version,
                                 "description": v.description, "metrics": v.metrics, "tags": v.tags,
                                 "aliases": v.aliases, "size": v.size, "content_digest": v.content_digest})
            runs = {v["run_id"] for v in versions if v["run_id"]}
            experiments = _run_experiments(store, runs)
            for v in versions:  # the run's snapshot stands in when the version names none (as lineage() does)
                run = experiments.get(v["run_id"])
                v["experiment"] = run[0] if run else None
                v["data_snapshot"] = v["data_snapshot"] or (run[1] if run else None)
            history = [msgspec.structs.asdict(e) for e in alias_history(summary.name, store=store)]
            models.append({"name": summary.name, "aliases": summary.aliases, "versions": versions,
                           "alias_history": history})
    return {"store": str(store_root(root)), "models": models}


def _run_experiments(store: Store, run_ids: set[str]) -> dict[str, tuple[str, str | None]]:
    if not run_ids:
        return {}
    marks = ",".join("?" * len(run_ids))
    rows = store.db.execute(f"SELECT id, experiment, data_snapshot FROM runs WHERE id IN ({marks})", sorted(run_ids))
    return {r[0]: (r[1], r[2]) for r in rows}


def runs_view(root: str | None, limit: int) -> dict:
    """The newest runs with their params and final metrics."""
    from loopserve.tracking import list_runs

    if not has_store(root):
        return {"runs": []}
    with Store(root) as store:
        runs = list_runs(store=store, limit=limit)
    return {"runs": [{k: getattr(r, k) for k in RUN_FIELDS} for r in runs]}


def run_view(root: str | None, run_id: str) -> dict:
    """One run: params, final metrics, and every metric's curve over its steps."""
    from loopserve.tracking import get_run, metric_history
    from loopserve.tracking.errors import RunNotFound

    if not has_store(root):
        raise RunNotFound(f"no run with id {run_id!r}: the server's store {store_root(root)} is empty")
    with Store(root) as store:
        run = get_run(run_id, store=store)
        curves = {name: [[p.step, p.value] for p in metric_history(run.id, name, store=store)]
                  for name in run.metrics}
    out = {k: getattr(run, k) for k in RUN_FIELDS}
    out.update(curves=curves, code=msgspec.structs.asdict(run.code), python=run.python, command=run.command,
               artifacts=[msgspec.structs.asdict(a) for a in run.artifacts])
    return out


def pipeline_view(root: str | None, limit: int) -> dict:
    """The newest pipeline runs with their steps, and for each the trigger decision that
    started it (its reasons and the evidence it read), when a trigger did."""
    from loopserve.pipeline.records import PipelineRecords

    if not has_store(root):
        return {"runs": []}
    with Store(root) as store:
        if store.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'pipeline_runs'").fetchone() is None:
            return {"runs": []}  # no pipeline has run against this store
        records = PipelineRecords(store, create=False)
        runs = records.runs(limit=limit)
        fired = {}
        for model in {r.model for r in runs}:
            fired[model] = records.decisions(model, limit=limit, fired_only=True)  # newest first
    out = []
    for run in runs:
        item = msgspec.structs.asdict(run)
        item["steps"] = [msgspec.structs.asdict(s) for s in run.steps]
        # The watch loop records the firing decision, then starts the run at once.
        item["trigger"] = next((d for d in fired[run.model] if d["at"] <= run.started_at + 1.0), None)
        out.append(item)
    return {"runs": out}
