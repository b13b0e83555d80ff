"""Rows for training and evaluation, from a data snapshot or a built-in generator.

Whatever the source, the result is a `TabularData`: the float32 feature matrix (the model's
input), labels, the sensitive group (never a model input), and the names and categorical
cardinalities that describe the columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from loopserve.errors import ConfigError
from loopserve.training.config import DataSpec

EXCLUDED = ("row",)  # bookkeeping columns that are never features


@dataclass
class TabularData:
    features: np.ndarray  # float32 [n, F]
    labels: np.ndarray  # int64 [n]
    groups: np.ndarray | None  # int64 [n] codes (-1: no group), or None without a group column
    feature_names: list[str]
    categorical: dict[str, int]
    group_names: list[str] | None = None
    snapshot_id: str | None = None  # set when the rows came from (or were saved as) a snapshot
    columns: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # the source columns

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> "TabularData":
        return TabularData(self.features[index], self.labels[index],
                           None if self.groups is None else self.groups[index], self.feature_names,
                           self.categorical, self.group_names, self.snapshot_id)


def load_data(spec: DataSpec, key: str = "data", store=None) -> TabularData:
    """The rows `spec` names; errors name the config key (`key`)."""
    group_names = None
    if spec.generator is not None:
        from loopserve.datasets import FraudStream

        g = spec.generator
        stream = FraudStream(seed=g.seed, data_drift_at=g.data_drift_at, concept_drift_at=g.concept_drift_at,
                             drift_ramp=g.drift_ramp, fraud_rate=g.fraud_rate)
        columns = stream.batch(g.start, g.rows).to_columns()
        default_categorical = dict(stream.categorical)
        group_names = list(stream.group_names)
        snapshot_id = None
    else:
        from loopserve.data import SnapshotError, read_manifest, to_numpy

        try:  # a name is resolved once: renamed meanwhile, the id recorded is still the data loaded
            snapshot_id = read_manifest(spec.snapshot, store=store).id
            columns = to_numpy(snapshot_id, store=store)
        except SnapshotError as e:
            raise ConfigError(f"{key}.snapshot: {e}") from None
        default_categorical = None
    return from_columns(columns, spec, key, default_categorical, group_names, snapshot_id)


def from_columns(columns: dict[str, np.ndarray], spec: DataSpec, key: str = "data",
                 default_categorical: dict[str, int] | None = None, group_names: list[str] | None = None,
                 snapshot_id: str | None = None) -> TabularData:
    available = list(columns)
    for what, name in (("label", spec.label), ("group", spec.group)):
        if name is not None and name not in columns:
            raise ConfigError(f"{key}.{what}: no column {name!r} in the data; columns are {available}")
    names = spec.features or [c for c in available if c not in (spec.label, spec.group, *EXCLUDED)]
    missing = [n for n in names if n not in columns]
    if missing:
        raise ConfigError(f"{key}.features: no column(s) {missing} in the data; columns are {available}")
    if not names:
        raise ConfigError(f"{key}.features: no feature columns left besides the label and group")
    for n in names:
        if columns[n].ndim != 1 or columns[n].dtype.kind not in "biuf":
            raise ConfigError(f"{key}.features: column {n!r} is {columns[n].dtype} of shape {columns[n].shape}; "
                              f"expected a 1-D numeric column")
    if spec.categorical is not None:
        categorical = dict(spec.categorical)
        unknown = [n for n in categorical if n not in names]
        if unknown:
            raise ConfigError(f"{key}.categorical: {unknown} are not among the features {names}")
    elif default_categorical is not None:
        categorical = {n: c for n, c in default_categorical.items() if n in names}
    else:  # integer columns hold category codes 0..max
        categorical = {n: int(columns[n].max()) + 1 if len(columns[n]) else 1
                       for n in names if columns[n].dtype.kind in "iu"}
    features = np.stack([np.asarray(columns[n], dtype=np.float32) for n in names], axis=1)
    for n, card in categorical.items():
        col = features[:, names.index(n)]
        bad = (col < 0) | (col >= card) | (col != np.floor(col))
        if bad.any():
            raise ConfigError(f"{key}.categorical: feature {n!r} has code {col[bad][0]:g}; expected integer codes "
                              f"0..{card - 1} ({card} categories)")
    labels = np.asarray(columns[spec.label])
    if not np.isin(labels, (0, 1)).all():
        raise ConfigError(f"{key}.label: column {spec.label!r} must hold 0/1 labels; found "
                          f"{np.unique(labels)[:5].tolist()}")
    groups = None
    if spec.group is not None:
        groups, names_in_column = group_codes(columns[spec.group])
        group_names = names_in_column or group_names
    return TabularData(features, labels.astype(np.int64), groups, names, categorical, group_names, snapshot_id,
                       columns)


def group_codes(column: np.ndarray) -> tuple[np.ndarray, list[str] | None]:
    """(int64 codes, names or None): a numeric group column is its own codes; a text one (the
    groups as clients sent them) is coded in sorted order of its names, so the same rows always
    get the same codes and names, and "" or a null (no group) gets -1, the code of no group."""
    column = np.asarray(column)
    if column.dtype.kind in "biuf":
        return column.astype(np.int64), None
    text = np.array(["" if g is None else str(g) for g in column], dtype=str)
    names = sorted(set(text.tolist()) - {""})
    codes = np.searchsorted(np.array(names, dtype=str), text) if names else np.zeros(len(text), np.int64)
    return np.where(text == "", -1, codes).astype(np.int64), names


def split(data: TabularData, fraction: float, seed: int) -> tuple[TabularData, TabularData]:
    """(train, validation): a seeded random split, identical in every process."""
    n = len(data)
    n_val = max(1, int(round(n * fraction)))
    if n - n_val < 1:
        raise ConfigError(f"validation_split: {fraction} of {n} rows leaves no training rows")
    order = np.random.default_rng([seed, 7]).permutation(n)
    return data.take(np.sort(order[n_val:])), data.take(np.sort(order[:n_val]))
