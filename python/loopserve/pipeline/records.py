"""What the pipeline did, in the store's database: runs, their steps, and trigger decisions.

A run is a row per attempt (model, why it started, status); each step is a row with its
status, times and a JSON detail. `loopserve pipeline status` reads them; a step that failed
says why, and the steps after it never start.
"""

from __future__ import annotations

import json
import time
import uuid

import msgspec

from loopserve.store import Store, transaction
from loopserve.store.db import ensure_schema

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
CREATE INDEX IF NOT EXISTS pipeline_decisions_model ON pipeline_decisions (model, at)
"""


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


KEEP_DECISIONS = 10_000  # per model: a watch loop decides every few seconds, forever


class PipelineRecords:
    """Not shared between threads (one database connection); any number of processes."""

    def __init__(self, store: Store, create: bool = True):
        """`create=False` for a reader that knows the tables exist: no write transaction."""
        self.store = store
        self._decisions_recorded = 0
        if create:
            ensure_schema(store.db, SCHEMA)

    def start_run(self, model: str, reason: str) -> str:
        run_id = uuid.uuid4().hex[:12]
        with transaction(self.store.db) as db:
            db.execute("INSERT INTO pipeline_runs (id, model, reason, status, started_at) VALUES (?, ?, ?, ?, ?)",
                       (run_id, model, reason, "running", time.time()))
        return run_id

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
        with transaction(self.store.db) as db:
            db.execute("UPDATE pipeline_runs SET status = ?, finished_at = ?, outcome = ? WHERE id = ?",
                       (status, time.time(), outcome, run_id))

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
        out = []
        for r in rows:
            steps = self.store.db.execute("SELECT * FROM pipeline_steps WHERE run_id = ? ORDER BY position",
                                          (r["id"],)).fetchall()
            out.append(RunRecord(r["id"], r["model"], r["reason"], r["status"], r["started_at"], r["finished_at"],
                                 r["outcome"], [StepRecord(s["step"], s["status"], s["started_at"], s["finished_at"],
                                                           json.loads(s["detail"]) if s["detail"] else {})
                                                for s in steps]))
        return out

    def last_run(self, model: str) -> RunRecord | None:
        runs = self.runs(model, limit=1)
        return runs[0] if runs else None
