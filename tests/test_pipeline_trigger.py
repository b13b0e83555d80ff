"""Retrain triggers: each rule, the cooldown, and the evidence kept with every decision."""

from loopserve.pipeline.trigger import Evidence, TriggerConfig, decide


def evidence(**kw):
    return Evidence(now=1000.0, **kw)


def test_drift_for_k_consecutive_windows_fires():
    config = TriggerConfig(drift_windows=2)
    assert not decide(config, evidence(drift_verdicts=["no drift", "drift"])).fire
    assert not decide(config, evidence(drift_verdicts=["drift"])).fire
    d = decide(config, evidence(drift_verdicts=["no drift", "drift", "drift"], drifted_features=["amount"]))
    assert d.fire and "drift in the last 2 windows (features: amount)" in d.reasons[0]
    assert not decide(config, evidence(drift_verdicts=["drift", "insufficient data"])).fire


def test_accuracy_below_the_floor_needs_enough_labels():
    config = TriggerConfig(drift_windows=None, accuracy_floor=0.9, min_labels=100)
    assert not decide(config, evidence(live_accuracy=0.5, live_labels=99)).fire
    assert not decide(config, evidence(live_accuracy=0.95, live_labels=500)).fire
    d = decide(config, evidence(live_accuracy=0.8, live_labels=100))
    assert d.fire and "live accuracy 0.800 < floor 0.9 over 100 labels" in d.reasons


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
    d = decide(config, evidence(drift_verdicts=["drift"], last_run_at=900.0))
    assert not d.fire and d.reasons[0].startswith("cooldown: 100 s since the last run < 300 s")
    assert decide(config, evidence(drift_verdicts=["drift"], last_run_at=600.0)).fire


def test_decisions_are_recorded_with_their_evidence_and_kept_bounded(tmp_path, monkeypatch):
    from loopserve.pipeline import records as records_module
    from loopserve.pipeline.records import PipelineRecords
    from loopserve.store import Store

    monkeypatch.setattr(records_module, "KEEP_DECISIONS", 150)
    config = TriggerConfig(drift_windows=1)
    with Store(tmp_path) as store:
        records = PipelineRecords(store)
        for i in range(300):
            records.record_decision("fraud", decide(config, Evidence(now=float(i), drift_verdicts=["no drift"])))
        kept = records.decisions("fraud", limit=1000)
    assert 150 <= len(kept) <= 250 and kept[0]["at"] == 299.0
    assert kept[0]["fire"] is False and kept[0]["reasons"] == ["no rule holds"]
    assert kept[0]["evidence"]["drift_verdicts"] == ["no drift"]
