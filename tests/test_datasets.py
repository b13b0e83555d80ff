"""The synthetic fraud stream: determinism, slices, schema, and drift that is really there."""

import numpy as np
import pytest
import torch

from loopserve.datasets import CATEGORICAL, FEATURES, FraudStream, LabelDelay
from loopserve.datasets.fraud import BLOCK
from loopserve.training.config import ModelSpec
from loopserve.training.metrics import roc_auc
from loopserve.training.model import TabularMLP, fit_normalization, predict


def same(a, b):
    return (np.array_equal(a.features, b.features) and np.array_equal(a.labels, b.labels)
            and np.array_equal(a.groups, b.groups) and np.array_equal(a.rows, b.rows))


def test_deterministic_from_seed():
    a = FraudStream(seed=3).batch(0, 3000)
    assert same(a, FraudStream(seed=3).batch(0, 3000))
    assert not np.array_equal(a.features, FraudStream(seed=4).batch(0, 3000).features)


@pytest.mark.parametrize("start,n", [(0, 10), (BLOCK - 5, 20), (3 * BLOCK + 17, 2 * BLOCK + 3), (12_345, 1)])
def test_any_slice_is_the_same_rows(start, n):
    stream = FraudStream(seed=1, data_drift_at=BLOCK + 100, concept_drift_at=2 * BLOCK + 7)
    whole = stream.batch(0, 6 * BLOCK)
    part = FraudStream(seed=1, data_drift_at=BLOCK + 100, concept_drift_at=2 * BLOCK + 7).batch(start, n)
    assert len(part) == n and part.rows[0] == start
    if start + n <= 6 * BLOCK:
        assert np.array_equal(part.features, whole.features[start:start + n])
        assert np.array_equal(part.labels, whole.labels[start:start + n])


def test_schema_and_rates():
    b = FraudStream(seed=0).batch(0, 40_000)
    assert b.features.dtype == np.float32 and b.features.shape == (40_000, len(FEATURES))
    assert b.feature_names == list(FEATURES) and "age_band" not in b.feature_names
    assert 8 <= len(b.feature_names) - len(CATEGORICAL) <= 12
    for name, card in CATEGORICAL.items():
        codes = b.column(name)
        assert codes.min() >= 0 and codes.max() <= card - 1 and np.all(codes == np.floor(codes))
    assert len(np.unique(b.column("merchant_category"))) == 20 and len(np.unique(b.column("country"))) >= 45
    assert 0.02 <= b.labels.mean() <= 0.05
    assert set(np.unique(b.groups)) == {0, 1, 2} and b.group_names == ["18-34", "35-59", "60+"]
    assert roc_auc(b.labels, b.fraud_probability) > 0.85  # the labels carry learnable signal
    cols = b.to_columns()
    assert list(cols) == ["row", *FEATURES, "is_fraud", "age_band"]
    assert cols["country"].dtype == np.int32 and cols["amount"].dtype == np.float32
    assert b.to_table().num_rows == 40_000


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="fraud_rate"):
        FraudStream(fraud_rate=0.9)
    with pytest.raises(ValueError, match="data_drift_at"):
        FraudStream(data_drift_at=-1)
    with pytest.raises(ValueError, match="start and n"):
        FraudStream().batch(-1, 5)


def test_data_drift_moves_amounts_and_country_mix_from_its_row():
    d = 20_000
    drifting = FraudStream(seed=2, data_drift_at=d)
    plain = FraudStream(seed=2)
    # Before D, the stream is the undrifted one, row for row.
    assert same(drifting.batch(d - 3000, 3000), plain.batch(d - 3000, 3000))
    before, after = drifting.batch(d - 10_000, 10_000), drifting.batch(d, 10_000)
    assert np.median(after.column("amount")) > 1.3 * np.median(before.column("amount"))
    home_before, home_after = np.mean(before.column("country") == 0), np.mean(after.column("country") == 0)
    assert home_before > 0.65 and home_after < 0.6
    assert np.mean(after.column("country") >= 30) > 3 * np.mean(before.column("country") >= 30)
    assert "data drift from row 20,000" in drifting.schedule()


def test_ramped_drift_phases_in():
    stream = FraudStream(seed=2, data_drift_at=10_000, drift_ramp=10_000)
    early, mid, late = (np.median(stream.batch(s, 4000).column("amount")) for s in (4000, 13_000, 22_000))
    assert early < mid < late


def test_a_model_fitted_before_concept_drift_loses_auc_after_it():
    c = 30_000
    stream = FraudStream(seed=5, concept_drift_at=c)
    assert same(stream.batch(0, 2000), FraudStream(seed=5).batch(0, 2000))
    train = stream.batch(0, 20_000)
    torch.manual_seed(0)
    model = TabularMLP(train.feature_names, train.categorical,
                       ModelSpec(hidden=[16], log_features=["amount", "distance_from_home_km", "account_age_days",
                                                            "minutes_since_last_txn"]))
    fit_normalization(model, train.features)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.from_numpy(train.features), torch.from_numpy(train.labels.astype(np.float32))
    for _ in range(3):
        for i in range(0, len(x), 256):
            optimizer.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x[i:i + 256], logits=True).reshape(-1),
                                                                        y[i:i + 256])
            loss.backward()
            optimizer.step()
    before = stream.batch(20_000, 10_000)
    after = stream.batch(c, 10_000)
    auc_before = roc_auc(before.labels, predict(model, before.features))
    auc_after = roc_auc(after.labels, predict(model, after.features))
    assert auc_before > 0.8
    assert auc_after < auc_before - 0.2, (auc_before, auc_after)
    assert roc_auc(after.labels, after.fraud_probability) > 0.85  # the new pattern is learnable


def test_label_delays_follow_their_distribution_and_are_a_function_of_the_row():
    stream = FraudStream(seed=4)
    delay = LabelDelay(median_s=5.0, sigma=0.6, never=0.2)
    delays = stream.label_delays(1000, 3 * BLOCK, delay)
    # Any slice gives the same delays, and drawing them leaves the rows as they were.
    assert np.array_equal(delays[BLOCK - 7:BLOCK + 50], stream.label_delays(1000 + BLOCK - 7, 57, delay))
    same(stream.batch(1000, 100), FraudStream(seed=4).batch(1000, 100))
    never = np.isinf(delays)
    assert abs(never.mean() - 0.2) < 0.02
    logs = np.log(delays[~never])  # log-normal: the log is normal with mean log(5) and sd 0.6
    assert np.median(delays[~never]) == pytest.approx(5.0, rel=0.05)
    assert logs.std() == pytest.approx(0.6, rel=0.05)
    assert np.all(stream.label_delays(0, 10, LabelDelay(median_s=1.0)) == 1.0)
    with pytest.raises(ValueError, match="never in"):
        LabelDelay(never=1.5)


def test_snapshot_round_trip(tmp_path):
    from loopserve.data import snapshot, to_numpy

    b = FraudStream(seed=0).batch(500, 1000)
    info = snapshot(b.to_table(), store=tmp_path / "store", name="fraud-slice")
    cols = to_numpy(info.id, store=tmp_path / "store")
    for name, values in b.to_columns().items():
        assert np.array_equal(cols[name], values), name
    assert snapshot(b.to_columns(), store=tmp_path / "store").id == info.id  # the same rows, the same id
