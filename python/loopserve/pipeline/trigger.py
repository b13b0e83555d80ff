"""When to retrain: drift over k windows, accuracy below a floor, enough new labels, or a
schedule; with a cooldown. Deciding is a pure function of the evidence, so every decision
(fire or not) can be logged with exactly what it saw, and tested without a server.

A decision that fires also says where the change began (`since`, in prediction time), from the
signal that fired: the trailing run of drifted windows, or of accuracy windows under the floor.
The first window of that run may hold the change itself, with rows from before it mixed in, so
the change point is taken as that window's end: the rows predicted after it are all of the new
world (at the cost of one window of rows).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Struct


class TriggerConfig(Struct, forbid_unknown_fields=True, frozen=True):
    """Any rule that holds fires a retrain (unless in cooldown). A rule left None is off."""

    drift_windows: Annotated[int, Meta(ge=1)] | None = 2  # the last k closed windows all drifted
    # Live accuracy under this floor in the last `accuracy_windows` complete windows of
    # prediction time (feedback.window_s wide), each with at least `min_labels` labels.
    accuracy_floor: Annotated[float, Meta(ge=0, le=1)] | None = None
    accuracy_windows: Annotated[int, Meta(ge=1)] = 2
    min_labels: Annotated[int, Meta(ge=1)] = 200
    # Labels come late: a prediction-time window counts once this long has passed since its end.
    label_wait_s: Annotated[float, Meta(ge=0)] = 0.0
    new_labels: Annotated[int, Meta(ge=1)] | None = None  # this many labels since the last retrain
    schedule_s: Annotated[float, Meta(gt=0)] | None = None  # at least this long since the last retrain
    cooldown_s: Annotated[float, Meta(ge=0)] = 300.0  # no new retrain sooner than this after one


class DriftWindow(Struct, array_like=True):
    start: float
    end: float
    verdict: str


class AccuracyWindow(Struct, array_like=True):
    """A complete window of prediction time: [start, end), its accuracy and labels."""

    start: float
    end: float
    accuracy: float
    labels: int


class Evidence(Struct):
    """What the trigger looked at, as read from the server (and the pipeline's own history)."""

    now: float
    drift_windows: list[DriftWindow] = []  # the latest closed drift windows, oldest first
    drifted_features: list[str] = []  # of the latest closed window
    accuracy_windows: list[AccuracyWindow] = []  # production's complete windows, oldest first
    labels_total: int = 0  # labels joined since the server started
    labels_at_last_run: int = 0
    last_run_at: float | None = None  # when the last retrain started


class Decision(Struct):
    fire: bool
    reasons: list[str]  # why it fires, or why not
    evidence: Evidence
    # Predictions made after this (unix seconds) are of the changed world; None: no change point
    # (a schedule or new-label rule fired), every row counts.
    since: float | None = None


def _trailing_run(windows: list, holds) -> list:
    run = []
    for w in reversed(windows):
        if not holds(w):
            break
        run.append(w)
    return run[::-1]


def decide(config: TriggerConfig, evidence: Evidence) -> Decision:
    fired: list[str] = []
    stale: list[str] = []  # rules that hold on windows the last run already saw
    change_points: list[float] = []
    since = None if evidence.last_run_at is None else evidence.now - evidence.last_run_at
    # The clock went back (an NTP step, a restored VM): the last run's time cannot be compared
    # with now or with the windows' times, so it holds nothing back (no cooldown, no stale
    # windows) and starts no schedule; the next run's time is on the new clock.
    clock_back = since is not None and since < 0
    last_run_at = None if clock_back else evidence.last_run_at

    def seen_by_last_run(run: list, signal: str) -> bool:
        """The run of windows ended before the last run started: that run had this evidence."""
        if last_run_at is None or run[-1].end > last_run_at:
            return False
        stale.append(f"{signal}, but the newest of those windows ended {last_run_at - run[-1].end:.0f} s before "
                     f"the last run started: no new evidence")
        return True

    k = config.drift_windows
    drifted = _trailing_run(evidence.drift_windows, lambda w: w.verdict == "drift")
    if k and len(drifted) >= k and not seen_by_last_run(drifted, f"drift in the last {k} windows"):
        features = ", ".join(evidence.drifted_features) or "?"
        fired.append(f"drift in the last {k} windows (features: {features})")
        change_points.append(drifted[0].end)
    if config.accuracy_floor is not None:
        # A window with under min_labels labels is no evidence either way: it neither breaks the
        # run of windows under the floor nor counts in it.
        counted = [w for w in evidence.accuracy_windows if w.labels >= config.min_labels]
        under = _trailing_run(counted, lambda w: w.accuracy < config.accuracy_floor)
        if len(under) >= config.accuracy_windows and not seen_by_last_run(
                under, f"live accuracy under {config.accuracy_floor}"):
            last = under[-config.accuracy_windows:]
            fired.append(f"live accuracy {', '.join(f'{w.accuracy:.3f}' for w in last)} < floor "
                         f"{config.accuracy_floor} in the last {config.accuracy_windows} complete windows of "
                         f"prediction time with {config.min_labels}+ labels ({sum(w.labels for w in last)} labels)")
            change_points.append(under[0].end)
    new = evidence.labels_total - evidence.labels_at_last_run
    if config.new_labels is not None and new >= config.new_labels:
        fired.append(f"{new} new labels >= {config.new_labels}")
    if config.schedule_s is not None and (since is None or since >= config.schedule_s):
        fired.append("scheduled: " + ("never ran" if since is None else f"{since:.0f} s since the last run"))
    if clock_back:
        note = [f"the clock is {-since:.0f} s behind the last run's start: a clock change, not a cooldown"]
        fired, stale = (fired + note, stale) if fired else (fired, stale + note)
    if not fired:
        return Decision(False, stale or ["no rule holds"], evidence)
    if since is not None and 0 <= since < config.cooldown_s:
        return Decision(False, [f"cooldown: {since:.0f} s since the last run < {config.cooldown_s:.0f} s; would "
                                f"fire for: " + "; ".join(fired)], evidence)
    # Both signals fired: the later change point, so every row is past both.
    return Decision(True, fired, evidence, max(change_points) if change_points else None)


def encode(decision: Decision) -> bytes:
    return msgspec.json.encode(decision)
