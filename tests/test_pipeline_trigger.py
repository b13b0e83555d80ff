"""Retrain triggers: each rule, the cooldown, and the evidence kept with every decision."""

from loopserve.pipeline.trigger import AccuracyWindow, DriftWindow, Evidence, TriggerConfig, decide


def evidence(now=1000.0, **kw):
    return Evidence(now=now, **kw)


def drift(*verdicts):
    """Drift windows of 10 s each, from t=100."""
    return [DriftWindow(100.0 + 10 * i, 110.0 + 10 * i, v) for i, v in enumerate(verdicts)]


def accuracy(*windows):
    """Accuracy windows of 1 s each from t=500: (accuracy, labels)."""
    return [AccuracyWindow(500.0 + i, 501.0 + i, a, n) for i, (a, n) in enumerate(windows)]


def test_drift_for_k_consecutive_windows_fires_from_the_end_of_the_runs_first_window():
    config = TriggerConfig(drift_windows=2)
    assert not decide(config, evidence(drift_windows=drift("no drift", "drift"))).fire
    assert not decide(config, evidence(drift_windows=drift("drift"))).fire
    d = decide(config, evidence(drift_windows=drift("no drift", "drift", "drift", "drift"),
                                drifted_features=["amount"]))
    assert d.fire and "drift in the last 2 windows (features: amount)" in d.reasons[0]
    # The run began in the window [110, 120): it may hold the change itself, so rows count from its end.
    assert d.since == 120.0
    assert not decide(config, evidence(drift_windows=drift("drift", "insufficient data"))).fire


def test_accuracy_under_the_floor_over_complete_windows_with_enough_labels():
    config = TriggerConfig(drift_windows=None, accuracy_floor=0.9, accuracy_windows=2, min_labels=100)
    assert not decide(config, evidence(accuracy_windows=accuracy((0.95, 500), (0.5, 99), (0.5, 99)))).fire
    assert not decide(config, evidence(accuracy_windows=accuracy((0.95, 500), (0.8, 100)))).fire
    d = decide(config, evidence(accuracy_windows=accuracy((0.95, 500), (0.85, 300), (0.8, 100), (0.7, 200))))
    assert d.fire and d.reasons == ["live accuracy 0.800, 0.700 < floor 0.9 in the last 2 complete windows of "
                                    "prediction time with 100+ labels (300 labels)"]
    assert d.since == 502.0  # the run under the floor began in [501, 502)
    # A window with too few labels is no evidence either way: it neither breaks nor joins the run.
    d = decide(config, evidence(accuracy_windows=accuracy((0.95, 500), (0.8, 300), (0.99, 10), (0.7, 200))))
    assert d.fire and d.since == 502.0


def test_both_signals_take_the_later_change_point():
    config = TriggerConfig(drift_windows=1, accuracy_floor=0.9, accuracy_windows=1, min_labels=1)
    d = decide(config, evidence(drift_windows=drift("drift"), accuracy_windows=accuracy((0.5, 10))))
    assert d.fire and len(d.reasons) == 2 and d.since == 501.0


def test_accuracy_windows_are_those_complete_by_prediction_time():
    from loopserve.pipeline.retrain_data import complete_accuracy_windows

    window = {"labels": 10, "accuracy": 0.5}
    report = {"labels": {"1": {"joined": 25}, "2": {"joined": 5}},
              "versions": [{"version": 1, "by_prediction_time": [
                  window | {"start": 90.0, "end": 95.0}, window | {"start": 95.0, "end": 100.0},
                  {"labels": 0, "accuracy": None, "start": 85.0, "end": 90.0}]}]}
    windows, total = complete_accuracy_windows(report, "1", now=103.0, label_wait_s=5.0)
    assert total == 30 and windows == [AccuracyWindow(90.0, 95.0, 0.5, 10)]
    assert complete_accuracy_windows(report, "2", now=103.0, label_wait_s=0.0) == ([], 30)


def test_new_labels_and_schedule():
    config = TriggerConfig(drift_windows=None, new_labels=1000, schedule_s=3600)
    d = decide(config, evidence(labels_total=1500, labels_at_last_run=600, last_run_at=0.0))
    assert not d.fire and d.reasons == ["no rule holds"]
    d = decide(config, evidence(labels_total=1600, labels_at_last_run=600, last_run_at=500.0))
    assert d.fire and d.reasons == ["1000 new labels >= 1000"]
    d = decide(config, evidence(labels_total=0, last_run_at=-5000.0))
    assert d.fire and d.reasons == ["scheduled: 6000 s since the last run"]
    d = decide(config, evidence())
    assert d.fire and d.reasons == ["scheduled: never ran"]


def test_cooldown_holds_a_rule_back_and_says_so():
    config = TriggerConfig(drift_windows=1, cooldown_s=300)
    d = decide(config, evidence(drift_windows=drift("drift"), last_run_at=90.0, now=190.0))
    assert not d.fire and d.reasons[0].startswith("cooldown: 100 s since the last run < 300 s")
    assert decide(config, evidence(drift_windows=drift("drift"), last_run_at=90.0, now=390.0)).fire


def test_windows_the_last_run_already_saw_do_not_fire_it_again():
    """Drift (or accuracy under the floor) whose newest window ended before the last run
    started was that run's evidence: after the cooldown it does not fire again on the same
    windows; one more window after the run does."""
    config = TriggerConfig(drift_windows=2, accuracy_floor=0.9, accuracy_windows=2, min_labels=1, cooldown_s=300)
    seen = dict(drift_windows=drift("drift", "drift"), accuracy_windows=accuracy((0.5, 10), (0.5, 10)))
    d = decide(config, Evidence(now=2000.0, last_run_at=503.0, **seen))
    assert not d.fire and d.reasons == [
        "drift in the last 2 windows, but the newest of those windows ended 383 s before the last run started: "
        "no new evidence",
        "live accuracy under 0.9, but the newest of those windows ended 1 s before the last run started: no new "
        "evidence"]
    assert decide(config, Evidence(now=2000.0, last_run_at=90.0, **seen)).fire  # before any of them: fires
    d = decide(config, Evidence(now=2000.0, last_run_at=115.0, drift_windows=drift("drift", "drift", "drift")))
    assert d.fire and d.since == 110.0  # a window closed after the run: fires, the change point as before


def test_a_clock_stepped_back_is_no_cooldown():
    """The wall clock steps back an hour after a run (NTP, a restored VM): the interval since the
    run is negative, which says nothing about how long ago it was. Fresh drift fires."""
    config = TriggerConfig(drift_windows=2, cooldown_s=300, schedule_s=600)
    fresh = [DriftWindow(1400.0, 1460.0, "drift"), DriftWindow(1460.0, 1520.0, "drift")]
    d = decide(config, Evidence(now=1530.0, drift_windows=fresh, last_run_at=5125.0))
    assert d.fire and d.reasons == ["drift in the last 2 windows (features: ?)",
                                    "the clock is 3595 s behind the last run's start: a clock change, not a cooldown"]
    d = decide(config, Evidence(now=1530.0, last_run_at=5125.0))  # nothing holds: nothing fires, not even the schedule
    assert not d.fire and d.reasons == ["the clock is 3595 s behind the last run's start: a clock change, not a "
                                        "cooldown"]


def test_decisions_are_recorded_with_their_evidence_and_kept_bounded(tmp_path, monkeypatch):
    from loopserve.pipeline import records as records_module
    from loopserve.pipeline.records import PipelineRecords
    from loopserve.store import Store

    monkeypatch.setattr(records_module, "KEEP_DECISIONS", 150)
    config = TriggerConfig(drift_windows=1)
    with Store(tmp_path) as store:
        records = PipelineRecords(store)
        for i in range(300):
            records.record_decision("fraud", decide(config, Evidence(now=float(i), drift_windows=drift("no drift"))))
        kept = records.decisions("fraud", limit=1000)
    assert 150 <= len(kept) <= 250 and kept[0]["at"] == 299.0
    assert kept[0]["fire"] is False and kept[0]["reasons"] == ["no rule holds"]
    assert kept[0]["evidence"]["drift_windows"] == [[100.0, 110.0, "no drift"]]
    assert kept[0]["evidence"]["since"] is None
