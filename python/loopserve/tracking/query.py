"""Reading runs back: list, get (by id or unique prefix), compare, metric history."""

from __future__ import annotations

from typing import Any, Iterable

import msgspec

from loopserve.store import Store
from loopserve.store.db import Database
from loopserve.tracking.errors import RunNotFound
from loopserve.tracking.records import CodeVersion, MetricPoint, Run, RunArtifact, RunComparison
from loopserve.tracking.schema import opened

_MIN_PREFIX = 4


def resolve_run_id(db: Database, run_id: str) -> str:
    """The full id of `run_id`, which may be a unique prefix of at least 4 characters."""
    if not isinstance(run_id, str) or not run_id:
        raise RunNotFound(f"invalid run id {run_id!r}: expected a run id (or a unique prefix of it)")
    if db.execute("SELECT 1 FROM runs WHERE id=?", (run_id,)).fetchone():
        return run_id
    if len(run_id) >= _MIN_PREFIX and all(c in "0123456789abcdef" for c in run_id):
        rows = db.execute("SELECT id FROM runs WHERE id >= ? AND id < ? LIMIT 2",
                          (run_id, run_id + "g")).fetchall()
        if len(rows) == 1:
            return rows[0][0]
        if len(rows) > 1:
            raise RunNotFound(f"run id prefix {run_id!r} matches several runs; give more characters")
    raise RunNotFound(f"no run with id {run_id!r} (`loopserve runs list` shows the runs)")


def _run_from_row(db: Database, row) -> Run:
    run_id = row["id"]
    params = {k: msgspec.json.decode(v) for k, v in
              db.execute("SELECT key, value FROM run_params WHERE run_id=? ORDER BY key", (run_id,))}
    # The last value of each metric: highest step, then latest logged.
    metrics = {k: v for k, v in db.execute(
        "SELECT key, value FROM run_metrics WHERE run_id=? ORDER BY key, step, seq", (run_id,))}
    tags = {k: v for k, v in db.execute("SELECT key, value FROM run_tags WHERE run_id=? ORDER BY key", (run_id,))}
    artifacts = [RunArtifact(n, s, z) for n, s, z in db.execute(
        "SELECT name, sha256, size FROM run_artifacts WHERE run_id=? ORDER BY name", (run_id,))]
    dirty = row["git_dirty"]
    return Run(
        id=run_id, experiment=row["experiment"], status=row["status"], start_time=row["start_time"],
        end_time=row["end_time"], error=row["error"], data_snapshot=row["data_snapshot"],
        entrypoint=row["entrypoint"],
        code=CodeVersion(row["git_sha"], None if dirty is None else bool(dirty), row["git_root"]),
        python=row["python"], platform=row["platform"], packages=msgspec.json.decode(row["packages"]),
        command=msgspec.json.decode(row["command"]), cwd=row["cwd"], params=params, metrics=metrics,
        tags=tags, artifacts=artifacts)


def get_run(run_id: str, store: Store | None = None) -> Run:
    """The run with this id (or unique id prefix), with its params, final metrics, tags, artifacts."""
    with opened(store) as s:
        db = s.db
        full = resolve_run_id(db, run_id)
        return _run_from_row(db, db.execute("SELECT * FROM runs WHERE id=?", (full,)).fetchone())


def list_runs(experiment: str | None = None, store: Store | None = None, limit: int | None = None) -> list[Run]:
    """Runs, newest first; only those of `experiment` when given."""
    with opened(store) as s:
        db = s.db
        sql = "SELECT * FROM runs"
        args: list[Any] = []
        if experiment is not None:
            sql += " WHERE experiment=?"
            args.append(experiment)
        sql += " ORDER BY start_time DESC, id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [_run_from_row(db, row) for row in db.execute(sql, args).fetchall()]


def metric_history(run_id: str, name: str, store: Store | None = None) -> list[MetricPoint]:
    """Every value logged for metric `name` in the run, by step."""
    with opened(store) as s:
        full = resolve_run_id(s.db, run_id)
        return [MetricPoint(step, value, at) for step, value, at in s.db.execute(
            "SELECT step, value, logged_at FROM run_metrics WHERE run_id=? AND key=? ORDER BY step, seq",
            (full, name))]


def _differs(values: Iterable[Any]) -> bool:
    encoded = {msgspec.json.encode(v) for v in values}
    return len(encoded) > 1


def compare_runs(run_ids: list[str], store: Store | None = None) -> RunComparison:
    """Params and final metrics of several runs side by side, with the keys whose values differ."""
    with opened(store) as s:
        runs = [get_run(r, s) for r in run_ids]
    param_keys = sorted({k for r in runs for k in r.params})
    metric_keys = sorted({k for r in runs for k in r.metrics})
    params = {k: [r.params.get(k) for r in runs] for k in param_keys}
    metrics = {k: [r.metrics.get(k) for r in runs] for k in metric_keys}
    return RunComparison(runs=runs, params=params, metrics=metrics,
                         differing_params=[k for k in param_keys if _differs(params[k])],
                         differing_metrics=[k for k in metric_keys if _differs(metrics[k])])
