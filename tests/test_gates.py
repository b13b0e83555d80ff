"""Evaluation gates on real trained models served through loopserve: a good model passes; a model
trained on shuffled labels, one trained on group-biased labels, and a too-tight latency budget
each fail with the right reason."""

import itertools
import math
import re

import msgspec
import numpy as np
import pytest

from loopserve.datasets import FraudStream
from loopserve.training import GateConfig, GateError, GateReport, evaluate_gates, train
from loopserve.training.config import DataSpec, GeneratorSpec, ModelSpec, OutputSpec, TrackingSpec, TrainConfig
from loopserve.training.metrics import (accuracy, average_ranks, demographic_parity_difference,
                                        equal_opportunity_difference, group_stats, roc_auc)

LOG = ["amount", "account_age_days", "distance_from_home_km", "minutes_since_last_txn"]
THRESHOLD = 0.15  # fraud is ~3%: a useful decision threshold is well below 0.5


def _train(root, name, data: DataSpec, store=None, epochs=2):
    config = TrainConfig(data=data, model=ModelSpec(hidden=[32, 16], log_features=LOG), epochs=epochs,
                         batch_size=128, output=OutputSpec(dir=str(root), name=name),
                         tracking=TrackingSpec(enabled=False), store=store)
    return train(config, quiet=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Three models on the same 8,000 rows: honest labels, shuffled labels, group-biased labels."""
    from loopserve.data import snapshot

    root = tmp_path_factory.mktemp("gates")
    store = str(root / "store")
    rows = FraudStream(seed=11).batch(0, 8000)
    good = _train(root, "good", DataSpec(generator=GeneratorSpec(seed=11, rows=8000)), epochs=3)
    cols = rows.to_columns()
    shuffled = dict(cols, is_fraud=np.random.default_rng(0).permutation(cols["is_fraud"]))
    # Historical bias: a third of the 60+ group's transactions were flagged whatever they were. The
    # model never sees the group, but learns it through proxies (account age, device, activity).
    biased_labels = cols["is_fraud"].copy()
    biased_labels[(cols["age_band"] == 2) & (np.random.default_rng(1).random(len(rows)) < 0.3)] = 1
    biased = dict(cols, is_fraud=biased_labels)
    categorical = dict(rows.categorical)
    worse = _train(root, "shuffled", DataSpec(snapshot=snapshot(shuffled, store=store).id, categorical=categorical),
                   store=store, epochs=1)
    unfair = _train(root, "unfair", DataSpec(snapshot=snapshot(biased, store=store).id, categorical=categorical),
                    store=store)
    return {"good": good.model_dir, "shuffled": worse.model_dir, "unfair": unfair.model_dir}


@pytest.fixture(scope="module")
def holdout():
    return FraudStream(seed=11).batch(200_000, 6000)


def test_good_model_passes_every_gate_against_a_worse_production(models, holdout):
    gates = GateConfig(min_auc=0.75, min_accuracy=0.9, decision_threshold=THRESHOLD,
                       max_demographic_parity_difference=0.1, max_equal_opportunity_difference=0.35,
                       fairness_vs_production={"demographic_parity_difference": 0.05},
                       max_p99_latency_ms=1000.0, latency_calls=100)  # a loose budget: bench/ has the figures
    report = evaluate_gates(models["good"], holdout, gates, production_model_dir=models["shuffled"])
    assert report.passed, report.summary()
    assert {g.name for g in report.gates} == {"auc_min", "auc_vs_production", "accuracy_min",
                                              "accuracy_vs_production", "demographic_parity_difference",
                                              "demographic_parity_difference_vs_production",
                                              "equal_opportunity_difference", "latency_p99_ms"}
    # Two different models on the same rows: each gate carries production's value beside the candidate's.
    assert report.metrics["candidate_auc"] > report.metrics["production_auc"] + 0.1
    by_name = {g.name: g for g in report.gates}
    assert by_name["auc_vs_production"].production == report.metrics["production_auc"]
    assert by_name["auc_min"].production == report.metrics["production_auc"]
    assert by_name["demographic_parity_difference_vs_production"].production is not None
    assert report.rows == 6000 and report.positives == int(holdout.labels.sum())
    assert [g.name for g in report.groups] == ["18-34", "35-59", "60+"]
    # The report is JSON and comes back equal (it is stored with the version).
    assert GateReport.load(report.save(models["good"] + "/gates-test.json")) == report
    msgspec.json.decode(report.to_json())


def test_fairness_no_worse_than_production_on_the_same_rows(models, holdout):
    gates = GateConfig(decision_threshold=THRESHOLD, compare_to_production=[],
                       fairness_vs_production={"demographic_parity_difference": 0.02})
    unfair = evaluate_gates(models["unfair"], holdout, gates, production_model_dir=models["good"])
    (failure,) = unfair.failures()
    assert failure.name == "demographic_parity_difference_vs_production"
    assert failure.value > failure.production + 0.02 and failure.threshold == pytest.approx(failure.production + 0.02)
    assert re.fullmatch(r"demographic parity difference 0\.\d+ > production 0\.\d+ \+ margin 0\.02 on the same "
                        r"rows \(positive rate .*\)", failure.reason), failure.reason
    # The other way round, the fairer candidate passes against the unfair production.
    fair = evaluate_gates(models["good"], holdout, gates, production_model_dir=models["unfair"])
    assert fair.passed, fair.summary()


def test_production_failing_its_own_floors_is_reported_and_the_policy_decides(models, holdout):
    """Both models fail a floor of 0.99 AUC. "alert": recorded, the candidate is still rejected;
    "promote_if_better": the gate is waived for a candidate that beats production on it, never
    for one that does worse."""
    alert = evaluate_gates(models["good"], holdout, GateConfig(min_auc=0.99, compare_to_production=["auc"]),
                           production_model_dir=models["shuffled"])
    assert not alert.passed and [g.name for g in alert.failures()] == ["auc_min"]
    (failing,) = alert.production_failing
    assert failing.name == "auc_min" and failing.value == alert.metrics["production_auc"]
    assert failing.reason.startswith("production auc 0.") and alert.metrics["production_failing_gates"] == 1

    policy = GateConfig(min_auc=0.99, compare_to_production=["auc"], when_production_fails="promote_if_better")
    better = evaluate_gates(models["good"], holdout, policy, production_model_dir=models["shuffled"])
    assert better.passed, better.summary()
    waived = {g.name: g for g in better.gates if g.waived}
    assert list(waived) == ["auc_min"] and "waived: production fails this gate too" in waived["auc_min"].reason
    worse = evaluate_gates(models["shuffled"], holdout, policy, production_model_dir=models["good"])
    assert not worse.passed and not any(g.waived for g in worse.gates)
    assert {g.name for g in worse.failures()} == {"auc_min", "auc_vs_production"}
    # A production model that meets the floors is not reported.
    fine = evaluate_gates(models["good"], holdout, GateConfig(min_auc=0.6), production_model_dir=models["good"])
    assert fine.production_failing == [] and fine.metrics["production_failing_gates"] == 0


def test_a_production_failing_its_floors_is_no_yardstick_under_promote_if_better(models, holdout):
    """promote_if_better: once production fails its own AUC floor, a failed fairness comparison
    with it is waived; the ceilings still hold, a production that meets its floors is still the
    bar, and one that fails a fairness ceiling is still the bar for AUC."""
    gates = dict(min_auc=0.6, decision_threshold=THRESHOLD, compare_to_production=[],
                 fairness_vs_production={"demographic_parity_difference": 0.02})
    alert = evaluate_gates(models["unfair"], holdout, GateConfig(**gates), production_model_dir=models["shuffled"])
    assert [g.name for g in alert.production_failing] == ["auc_min"]
    assert [g.name for g in alert.failures()] == ["demographic_parity_difference_vs_production"]
    policy = GateConfig(**gates, when_production_fails="promote_if_better")
    waived = evaluate_gates(models["unfair"], holdout, policy, production_model_dir=models["shuffled"])
    assert waived.passed, waived.summary()
    (gate,) = [g for g in waived.gates if g.waived]
    assert gate.name == "demographic_parity_difference_vs_production"
    assert gate.reason.endswith("waived: production fails its own gates (auc_min), so it is no yardstick")
    # A ceiling is not a comparison: the same candidate over it still fails.
    ceiling = GateConfig(**gates, max_demographic_parity_difference=0.01, when_production_fails="promote_if_better")
    capped = evaluate_gates(models["unfair"], holdout, ceiling, production_model_dir=models["shuffled"])
    assert [g.name for g in capped.failures()] == ["demographic_parity_difference"]
    # A production that meets its floors stays the bar.
    held = evaluate_gates(models["unfair"], holdout, policy, production_model_dir=models["good"])
    assert [g.name for g in held.failures()] == ["demographic_parity_difference_vs_production"]
    assert not any(g.waived for g in held.gates)
    unfair_production = GateConfig(compare_to_production=["auc"], decision_threshold=THRESHOLD,
                                   max_demographic_parity_difference=0.01, when_production_fails="promote_if_better")
    worse = evaluate_gates(models["shuffled"], holdout, unfair_production, production_model_dir=models["unfair"])
    assert "demographic_parity_difference" in [g.name for g in worse.production_failing]
    assert "auc_vs_production" in [g.name for g in worse.failures()]


def test_worse_candidate_fails_against_production(models, holdout):
    report = evaluate_gates(models["shuffled"], holdout, GateConfig(compare_to_production=["auc"]),
                            production_model_dir=models["good"])
    assert not report.passed
    (failure,) = report.failures()
    assert failure.name == "auc_vs_production"
    assert re.fullmatch(r"auc 0\.\d+ < production 0\.\d+ on 6,000 held-out rows", failure.reason), failure.reason
    assert failure.value < report.metrics["production_auc"] - 0.1
    # With a margin as large as the gap, the same candidate is let through.
    gap = report.metrics["production_auc"] - report.metrics["candidate_auc"]
    lenient = evaluate_gates(models["shuffled"], holdout, GateConfig(compare_to_production=["auc"],
                                                                     production_margin=gap + 0.01),
                             production_model_dir=models["good"])
    assert lenient.passed and "- margin" in lenient.gates[0].reason


def test_auc_threshold_gate(models, holdout):
    report = evaluate_gates(models["shuffled"], holdout, GateConfig(min_auc=0.75))
    assert not report.passed
    assert re.fullmatch(r"auc 0\.\d+ < 0\.75 on 6,000 held-out rows", report.failures()[0].reason)


def test_unfair_model_fails_the_fairness_gates(models, holdout):
    gates = GateConfig(min_auc=0.6, decision_threshold=THRESHOLD, max_demographic_parity_difference=0.1,
                       max_equal_opportunity_difference=0.35)
    fair = evaluate_gates(models["good"], holdout, gates)
    unfair = evaluate_gates(models["unfair"], holdout, gates)
    assert fair.passed, fair.summary()
    assert not unfair.passed
    failed = {g.name: g for g in unfair.failures()}
    assert "demographic_parity_difference" in failed
    reason = failed["demographic_parity_difference"].reason
    assert reason.startswith("demographic parity difference") and "> 0.1" in reason and "'60+'" in reason, reason
    by_name = {g.name: g for g in unfair.groups}
    assert by_name["60+"].positive_rate > by_name["18-34"].positive_rate + 0.1


def test_fairness_without_groups_fails_rather_than_passing(models, holdout):
    class NoGroups:
        features, labels, groups = holdout.features, holdout.labels, None

    report = evaluate_gates(models["good"], NoGroups(), GateConfig(max_demographic_parity_difference=0.5))
    assert not report.passed and "no group attribute" in report.failures()[0].reason


def test_fairness_over_fewer_than_two_real_groups_fails_rather_than_passing(models, holdout):
    """One group alone, or every row without a group (-1, a request that named none): the gaps
    cannot be measured, so both fairness gates fail; -1 rows never count as a group."""
    gates = GateConfig(decision_threshold=THRESHOLD, max_demographic_parity_difference=0.5,
                       max_equal_opportunity_difference=0.5, min_group_positives=1)

    class Groups:
        features, labels = holdout.features, holdout.labels

        def __init__(self, groups):
            self.groups = groups

    for groups in (np.zeros(len(holdout.labels), np.int64), np.full(len(holdout.labels), -1, np.int64),
                   np.where(np.arange(len(holdout.labels)) % 2, 0, -1)):
        report = evaluate_gates(models["good"], Groups(groups), gates)
        failed = {g.name: g for g in report.failures()}
        assert set(failed) == {"demographic_parity_difference", "equal_opportunity_difference"}, report.summary()
        assert failed["demographic_parity_difference"].value is None
        assert "cannot be measured: fewer than two groups have rows" in failed["demographic_parity_difference"].reason
        assert all(g.group >= 0 for g in report.groups)
    # Two real groups beside rows without one: measured over the two, the -1 rows left out.
    mixed = np.where(np.arange(len(holdout.labels)) % 3 == 0, -1, np.asarray(holdout.groups) % 2)
    report = evaluate_gates(models["good"], Groups(mixed), gates)
    assert [g.group for g in report.groups] == [0, 1]
    assert sum(g.rows for g in report.groups) == int((mixed >= 0).sum())
    assert next(g for g in report.gates if g.name == "demographic_parity_difference").value is not None


def test_too_tight_latency_budget_fails(models, holdout):
    report = evaluate_gates(models["good"], holdout, GateConfig(max_p99_latency_ms=1e-6, latency_calls=50,
                                                                latency_warmup=5))
    (failure,) = report.failures()
    assert failure.name == "latency_p99_ms" and failure.value > 1e-6
    assert re.fullmatch(r"p99 latency at batch 1 \d+\.\d+ ms > budget 1e-06 ms over 50 calls \(after 5 warm-up "
                        r"calls\)", failure.reason), failure.reason


def test_holdout_that_does_not_fit_the_model(models, holdout):
    class Narrow:
        features, labels, groups = holdout.features[:, :5], holdout.labels, holdout.groups

    with pytest.raises(GateError, match="5 features"):
        evaluate_gates(models["good"], Narrow(), GateConfig(min_auc=0.5))
    with pytest.raises(GateError, match="cannot be loaded"):
        evaluate_gates(models["good"] + "-missing", holdout, GateConfig(min_auc=0.5))


# -- the metrics themselves ------------------------------------------------------------------

def brute_force_auc(labels, scores):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.random(60) < 0.3
        scores = np.round(rng.random(60), 1)  # many ties
        assert roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)
    assert roc_auc([0, 0, 1, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_group_rates():
    labels = np.array([1, 0, 0, 1, 1, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.1, 0.2, 0.9, 0.1, 0.1, 0.1])
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    stats = group_stats(labels, scores, groups, 0.5, ["a", "b"])
    assert [(s.name, s.positive_rate, s.true_positive_rate) for s in stats] == [("a", 0.5, 0.5), ("b", 0.25, 1.0)]
    assert demographic_parity_difference(stats)[0] == 0.25
    assert equal_opportunity_difference(stats)[0] == 0.5
    assert equal_opportunity_difference(stats, min_positives=2) is None
    assert demographic_parity_difference(stats[:1]) is None
    # Rows without a group (-1) are in no group.
    assert [s.group for s in group_stats(labels, scores, np.where(groups == 1, -1, 0), 0.5)] == [0]
    assert accuracy(labels, scores) == 0.75
