"""What the pipeline did, in the store's database: runs, their steps, and trigger decisions.

A run is a row per attempt (model, why it started, status); each step is a row with its
status, times and a JSON detail. `loopserve pipeline status` reads them; a step that failed
says why, and the steps after it never start.

One live run per model: starting a run takes the model's lease (a row in `pipeline_leases`,
in the same transaction that records the run), refused with RunInProgress while another run
holds it and renews it in time. A run's process renews its lease every lease_s / 4 (a
heartbeat, see runner.py); a lease not renewed for lease_s belongs to a dead process, and the
next pipeline to start takes its run over (`take_over`). Lease rows are written in the model's
registry scope, so a promotion checks its lease and moves the aliases in one serialized step.
"""

from __future__ import annotations

import json
import time
import uuid

import msgspec

from loopserve.errors import LoopserveError
from loopserve.registry.schema import registry_scope
from loopserve.store import Store, transaction
from loopserve.store.db import Database, ensure_schema

SCHEMA = """
CREATE TABLE IF NOT EXISTS pipeline_runs (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, reason TEXT NOT NULL, status TEXT NOT NULL,
    started_at REAL NOT NULL, finished_at REAL, outcome TEXT);
CREATE INDEX IF NOT EXISTS pipeline_runs_model ON pipeline_runs (model, started_at);
CREATE TABLE IF NOT EXISTS pipeline_steps (
    run_id TEXT NOT NULL REFERENCES pipeline_runs (id), step TEXT NOT NULL, position INTEGER NOT NULL,
    status TEXT NOT NULL, started_at REAL NOT NULL, finished_at REAL, detail TEXT,
    PRIMARY KEY (run_id, step));
CREATE TABLE IF NOT EXISTS pipeline_decisions (
    model TEXT NOT NULL, at REAL NOT NULL, fire INTEGER NOT NULL, reasons TEXT NOT NULL, evidence TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS pipeline_decisions_model ON pipeline_decisions (model, at);
CREATE TABLE IF NOT EXISTS pipeline_leases (
    model TEXT PRIMARY KEY, run_id TEXT NOT NULL, owner TEXT NOT NULL, expires_at REAL NOT NULL)
"""


class RunInProgress(LoopserveError):
    """Another live run of the model holds its lease."""


class LeaseLost(LoopserveError):
    """This run's lease was taken over (its heartbeat stopped for longer than the lease)."""


def lease_owner() -> str:
    """Who holds a lease, for messages: host and process."""
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def check_lease(db: Database, model: str, run_id: str) -> None:
    """Inside a transaction in the model's registry scope: LeaseLost unless `run_id` holds the lease."""
    row = db.execute("SELECT run_id, owner FROM pipeline_leases WHERE model = ?", (model,)).fetchone()
    if row is None or row["run_id"] != run_id:
        holder = "nobody" if row is None else f"{row['run_id']} ({row['owner']})"
        raise LeaseLost(f"run {run_id} no longer holds the lease of model '{model}' (held by {holder}): its "
                        f"heartbeat stopped for longer than the lease and another pipeline took the run over")


class StepRecord(msgspec.Struct):
    step: str
    status: str  # running | passed | failed | skipped
    started_at: float
    finished_at: float | None
    detail: dict


class RunRecord(msgspec.Struct):
    id: str
    model: str
    reason: str
    status: str  # running | promoted | rolled back | stopped | failed
    started_at: float
    finished_at: float | None
    outcome: str | None
    steps: list[StepRecord] = []


# How long a run's lease lasts unrenewed (renewed every quarter of it): past it, the run's
# process is taken for dead. Long enough for a loaded box's stalls, short enough that a crashed
# roll-out's canary is cleared within a minute of the next pipeline start.
DEFAULT_LEASE_S = 60.0
KEEP_DECISIONS = 10_000  # per model: a watch loop decides every few seconds, forever


class PipelineRecords:
    """Not shared between threads (one database connection); any number of processes."""

    def __init__(self, store: Store, create: bool = True):
        """`create=False` for a reader that knows the tables exist: no write transaction."""
        self.store = store
        self._decisions_recorded = 0
        if create:
            ensure_schema(store.db, SCHEMA)

    def start_run(self, model: str, reason: str, lease_s: float = DEFAULT_LEASE_S) -> str:
        """Records a new run holding the model's lease for lease_s; RunInProgress if a live one
        holds it."""
        run_id = uuid.uuid4().hex[:12]
        with transaction(self.store.db, registry_scope(model)) as db:
            now = time.time()
            self._refuse_if_held(db, model, now)
            db.execute("INSERT INTO pipeline_runs (id, model, reason, status, started_at) VALUES (?, ?, ?, ?, ?)",
                       (run_id, model, reason, "running", now))
            self._hold(db, model, run_id, now + lease_s)
        return run_id

    @staticmethod
    def _refuse_if_held(db: Database, model: str, now: float) -> None:
        row = db.execute("SELECT run_id, owner, expires_at FROM pipeline_leases WHERE model = ?", (model,)).fetchone()
        if row is not None and row["expires_at"] > now:
            raise RunInProgress(f"run {row['run_id']} of model '{model}' is in progress ({row['owner']} holds the "
                                f"model's lease for {row['expires_at'] - now:.0f} s more): one run per model at a "
                                f"time")

    @staticmethod
    def _hold(db: Database, model: str, run_id: str, expires_at: float) -> None:
        db.execute("INSERT INTO pipeline_leases (model, run_id, owner, expires_at) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT (model) DO UPDATE SET run_id = excluded.run_id, owner = excluded.owner, "
                   "expires_at = excluded.expires_at", (model, run_id, lease_owner(), expires_at))

    def renew(self, model: str, run_id: str, lease_s: float) -> bool:
        """The heartbeat: the lease held lease_s more; False if `run_id` no longer holds it."""
        with transaction(self.store.db, registry_scope(model)) as db:
            return db.execute("UPDATE pipeline_leases SET expires_at = ? WHERE model = ? AND run_id = ?",
                              (time.time() + lease_s, model, run_id)).rowcount == 1

    def take_over(self, model: str, lease_s: float) -> tuple[str, list[str]] | None:
        """If no live run holds the model's lease and runs are left `running` (their process
        died), the lease for a recovery (its id, and those runs' ids, oldest first); else None.
        The caller puts the aliases back and marks the runs failed, then release()s the lease."""
        if self.store.db.execute("SELECT 1 FROM pipeline_runs WHERE model = ? AND status = 'running' LIMIT 1",
                                 (model,)).fetchone() is None:
            return None  # the common case, read without taking the write lock
        with transaction(self.store.db, registry_scope(model)) as db:
            now = time.time()
            row = db.execute("SELECT expires_at FROM pipeline_leases WHERE model = ?", (model,)).fetchone()
            if row is not None and row["expires_at"] > now:
                return None
            left = [r["id"] for r in db.execute("SELECT id FROM pipeline_runs WHERE model = ? AND status = 'running' "
                                                "ORDER BY started_at", (model,))]
            if not left:
                return None
            recovery = "recovery-" + uuid.uuid4().hex[:12]
            self._hold(db, model, recovery, now + lease_s)
        return recovery, left

    def release(self, model: str, run_id: str) -> None:
        with transaction(self.store.db, registry_scope(model)) as db:
            db.execute("DELETE FROM pipeline_leases WHERE model = ? AND run_id = ?", (model, run_id))

    def start_step(self, run_id: str, step: str, position: int) -> None:
        with transaction(self.store.db) as db:
            db.execute("INSERT INTO pipeline_steps (run_id, step, position, status, started_at) VALUES (?, ?, ?, ?, ?) "
                       "ON CONFLICT (run_id, step) DO UPDATE SET position = excluded.position, status = excluded.status, "
                       "started_at = excluded.started_at, finished_at = NULL, detail = NULL",
                       (run_id, step, position, "running", time.time()))

    def finish_step(self, run_id: str, step: str, status: str, detail: dict) -> None:
        with transaction(self.store.db) as db:
            db.execute("UPDATE pipeline_steps SET status = ?, finished_at = ?, detail = ? WHERE run_id = ? AND step = ?",
                       (status, time.time(), json.dumps(detail, default=str), run_id, step))

    def finish_run(self, run_id: str, status: str, outcome: str) -> None:
        """Records the run's end and gives its lease back (if it still holds it)."""
        with transaction(self.store.db) as db:
            db.execute("UPDATE pipeline_runs SET status = ?, finished_at = ?, outcome = ? WHERE id = ?",
                       (status, time.time(), outcome, run_id))
            db.execute("UPDATE pipeline_steps SET status = 'failed', finished_at = ? WHERE run_id = ? AND "
                       "status = 'running'", (time.time(), run_id))
            db.execute("DELETE FROM pipeline_leases WHERE run_id = ?", (run_id,))

    def record_decision(self, model: str, decision) -> None:
        with transaction(self.store.db) as db:
            db.execute("INSERT INTO pipeline_decisions (model, at, fire, reasons, evidence) VALUES (?, ?, ?, ?, ?)",
                       (model, decision.evidence.now, int(decision.fire), json.dumps(decision.reasons),
                        json.dumps(msgspec.to_builtins(decision.evidence) | {"since": decision.since})))
            self._decisions_recorded += 1
            if self._decisions_recorded % 100 == 0:  # keep the newest KEEP_DECISIONS
                db.execute("DELETE FROM pipeline_decisions WHERE model = ? AND at < (SELECT at FROM pipeline_decisions "
                           "WHERE model = ? ORDER BY at DESC LIMIT 1 OFFSET ?)", (model, model, KEEP_DECISIONS))

    def decisions(self, model: str, limit: int = 50, fired_only: bool = False) -> list[dict]:
        """The newest decisions first; `fired_only`: those that started a run."""
        rows = self.store.db.execute("SELECT at, fire, reasons, evidence FROM pipeline_decisions WHERE model = ? "
                                     + ("AND fire = 1 " if fired_only else "") + "ORDER BY at DESC LIMIT ?",
                                     (model, limit)).fetchall()
        return [{"at": r["at"], "fire": bool(r["fire"]), "reasons": json.loads(r["reasons"]),
                 "evidence": json.loads(r["evidence"])} for r in rows]

    def runs(self, model: str | None = None, limit: int = 20) -> list[RunRecord]:
        query = "SELECT * FROM pipeline_runs" + (" WHERE model = ?" if model else "") + " ORDER BY started_at DESC LIMIT ?"
        rows = self.store.db.execute(query, ((model,) if model else ()) + (limit,)).fetchall()
        return [self._record(r) for r in rows]

    def run(self, run_id: str) -> RunRecord:
        return self._record(self.store.db.execute("SELECT * FROM pipeline_runs WHERE id = ?", (run_id,)).fetchone())

    def _record(self, r) -> RunRecord:
        steps = self.store.db.execute("SELECT * FROM pipeline_steps WHERE run_id = ? ORDER BY position",
                                      (r["id"],)).fetchall()
        return RunRecord(r["id"], r["model"], r["reason"], r["status"], r["started_at"], r["finished_at"],
                         r["outcome"], [StepRecord(s["step"], s["status"], s["started_at"], s["finished_at"],
                                                   json.loads(s["detail"]) if s["detail"] else {}) for s in steps])

    def last_run(self, model: str) -> RunRecord | None:
        runs = self.runs(model, limit=1)
        return runs[0] if runs else None
