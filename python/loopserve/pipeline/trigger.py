"""When to retrain: drift over k windows, accuracy below a floor, enough new labels, or a
schedule; with a cooldown. Deciding is a pure function of the evidence, so every decision
(fire or not) can be logged with exactly what it saw, and tested without a server.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Struct


class TriggerConfig(Struct, forbid_unknown_fields=True, frozen=True):
    """Any rule that holds fires a retrain (unless in cooldown). A rule left None is off."""

    drift_windows: Annotated[int, Meta(ge=1)] | None = 2  # the last k closed windows all drifted
    accuracy_floor: Annotated[float, Meta(ge=0, le=1)] | None = None  # live accuracy below this...
    min_labels: Annotated[int, Meta(ge=1)] = 200  # ...over at least this many labels
    new_labels: Annotated[int, Meta(ge=1)] | None = None  # this many labels since the last retrain
    schedule_s: Annotated[float, Meta(gt=0)] | None = None  # at least this long since the last retrain
    cooldown_s: Annotated[float, Meta(ge=0)] = 300.0  # no new retrain sooner than this after one


class Evidence(Struct):
    """What the trigger looked at, as read from the server (and the pipeline's own history)."""

    now: float
    drift_verdicts: list[str] = []  # the latest closed windows' verdicts, oldest first
    drifted_features: list[str] = []  # of the latest closed window
    drift_since: float | None = None  # when the trailing run of drifted windows began (unix seconds)
    live_accuracy: float | None = None
    live_labels: int = 0  # labels behind live_accuracy
    labels_total: int = 0  # labels joined since the server started
    labels_at_last_run: int = 0
    last_run_at: float | None = None  # when the last retrain started


class Decision(Struct):
    fire: bool
    reasons: list[str]  # why it fires, or why not
    evidence: Evidence


def decide(config: TriggerConfig, evidence: Evidence) -> Decision:
    fired: list[str] = []
    k = config.drift_windows
    recent = evidence.drift_verdicts[-k:] if k else []
    if k and len(recent) == k and all(v == "drift" for v in recent):
        features = ", ".join(evidence.drifted_features) or "?"
        fired.append(f"drift in the last {k} windows (features: {features})")
    if (config.accuracy_floor is not None and evidence.live_accuracy is not None
            and evidence.live_labels >= config.min_labels and evidence.live_accuracy < config.accuracy_floor):
        fired.append(f"live accuracy {evidence.live_accuracy:.3f} < floor {config.accuracy_floor} "
                     f"over {evidence.live_labels} labels")
    new = evidence.labels_total - evidence.labels_at_last_run
    if config.new_labels is not None and new >= config.new_labels:
        fired.append(f"{new} new labels >= {config.new_labels}")
    since = None if evidence.last_run_at is None else evidence.now - evidence.last_run_at
    if config.schedule_s is not None and (since is None or since >= config.schedule_s):
        fired.append("scheduled: " + ("never ran" if since is None else f"{since:.0f} s since the last run"))
    if not fired:
        return Decision(False, ["no rule holds"], evidence)
    if since is not None and since < config.cooldown_s:
        return Decision(False, [f"cooldown: {since:.0f} s since the last run < {config.cooldown_s:.0f} s; would "
                                f"fire for: " + "; ".join(fired)], evidence)
    return Decision(True, fired, evidence)


def encode(decision: Decision) -> bytes:
    return msgspec.json.encode(decision)
