"""The training config (`loopserve train CONFIG`): msgspec Structs decoded from YAML, TOML or JSON.

    data:       {generator: {seed: 0, start: 0, rows: 50000}}   # or {snapshot: ID-or-name}
    model:      {hidden: [64, 32], categorical_encoding: embedding}
    epochs: 5
    batch_size: 256
    output:     {dir: models, name: fraud}                       # relative to the config file
    gates:      {min_auc: 0.8, max_demographic_parity_difference: 0.05}
    holdout:    {generator: {seed: 0, start: 50000, rows: 20000}}

An unknown key or a bad value is a ConfigError naming the file, the key and what was expected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from loopserve.config import load_config
from loopserve.errors import ConfigError

Positive = Annotated[int, Meta(ge=1)]
NonNegative = Annotated[int, Meta(ge=0)]
Fraction = Annotated[float, Meta(ge=0.0, le=1.0)]
Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


class GeneratorSpec(Struct, forbid_unknown_fields=True, frozen=True):
    """Rows `start .. start + rows - 1` of a built-in stream (loopserve.datasets)."""

    dataset: Literal["fraud"] = "fraud"
    seed: int = 0
    start: NonNegative = 0
    rows: Positive = 50_000
    data_drift_at: NonNegative | None = None
    concept_drift_at: NonNegative | None = None
    drift_ramp: NonNegative = 0
    fraud_rate: Annotated[float, Meta(ge=0.001, le=0.5)] = 0.03


class DataSpec(Struct, forbid_unknown_fields=True, frozen=True):
    """Where rows come from: exactly one of `snapshot` (an id, id prefix or name in the store) or
    `generator`. `features` defaults to every column but the label, the group and `row`;
    `categorical` (name -> number of codes) defaults to the generator's, or for a snapshot to the
    integer-typed feature columns (codes 0..max)."""

    snapshot: str | None = None
    generator: GeneratorSpec | None = None
    features: list[str] | None = None
    label: str = "is_fraud"
    group: str | None = "age_band"
    categorical: dict[str, Positive] | None = None


class ModelSpec(Struct, forbid_unknown_fields=True, frozen=True):
    """An MLP over standardized numeric features and encoded categoricals; outputs P(label=1)."""

    hidden: list[Positive] = msgspec.field(default_factory=lambda: [64, 32])
    categorical_encoding: Literal["embedding", "onehot"] = "embedding"
    embedding_dim: NonNegative = 0  # 0: min(16, (codes + 1) // 2) per feature
    dropout: Fraction = 0.0
    # Numeric features passed through log1p(max(x, 0)) before standardizing (heavy tails).
    log_features: list[str] = []
    input_name: Name = "features"
    output_name: Name = "fraud_probability"


class OutputSpec(Struct, forbid_unknown_fields=True, frozen=True):
    """The model directory written: `<dir>/<name>/config.yaml` and `<dir>/<name>/<version>/`."""

    dir: str = "models"
    name: Name = "fraud"
    version: Positive | Literal["next"] = "next"
    max_batch_size: Positive = 256
    max_queue_delay_us: NonNegative = 500
    instances: Positive = 1


class GateConfig(Struct, forbid_unknown_fields=True, frozen=True):
    """Thresholds a candidate must meet on held-out data; a gate left unset (None) is not run."""

    min_auc: Fraction | None = None
    min_accuracy: Fraction | None = None
    # With a production model: candidate metric >= production's - margin, for each metric named.
    compare_to_production: list[Literal["auc", "accuracy"]] = msgspec.field(
        default_factory=lambda: ["auc", "accuracy"])
    production_margin: Annotated[float, Meta(ge=0.0)] = 0.0
    decision_threshold: Annotated[float, Meta(gt=0.0, lt=1.0)] = 0.5
    max_demographic_parity_difference: Fraction | None = None
    max_equal_opportunity_difference: Fraction | None = None
    # Non-inferiority: with a production model, the candidate's difference <= production's on the
    # same rows + this margin, for each fairness gate named.
    fairness_vs_production: dict[Literal["demographic_parity_difference", "equal_opportunity_difference"],
                                 Annotated[float, Meta(ge=0.0)]] = {}
    # When production itself fails a floor or ceiling above (it is measured on the same rows):
    # "alert" records it in the report (and the pipeline logs it) and the candidate must still
    # pass; "promote_if_better" also lets through a candidate whose only failures are gates that
    # production fails too, where the candidate does better than production.
    when_production_fails: Literal["alert", "promote_if_better"] = "alert"
    # Groups with fewer positives than this are left out of equal opportunity (their TPR is noise).
    min_group_positives: Positive = 20
    max_p99_latency_ms: Annotated[float, Meta(gt=0.0)] | None = None
    latency_calls: Annotated[int, Meta(ge=10)] = 300
    latency_warmup: NonNegative = 30


class TrackingSpec(Struct, forbid_unknown_fields=True, frozen=True):
    enabled: bool = True
    experiment: Name | None = None  # default: the output name
    # Snapshot generated training data into the store, so the run (and version) has a data lineage.
    snapshot_generated: bool = True


class RegistrySpec(Struct, forbid_unknown_fields=True, frozen=True):
    """Register the version (with its gate report) when every gate passed."""

    enabled: bool = False
    alias: Name | None = None  # point this alias (e.g. "staging") at the new version
    parent: int | Name | None = None  # the version this one descends from: a number or an alias


class ExportSpec(Struct, forbid_unknown_fields=True, frozen=True):
    torchscript: bool = True
    # Largest |eager - exported| allowed on the validation rows.
    tolerance: Annotated[float, Meta(gt=0.0)] = 1e-5


class TrainConfig(Struct, forbid_unknown_fields=True, frozen=True):
    data: DataSpec
    model: ModelSpec = ModelSpec()
    epochs: Positive = 5
    batch_size: Positive = 256  # global: split across data-parallel processes
    lr: Annotated[float, Meta(gt=0.0)] = 3e-3
    weight_decay: Annotated[float, Meta(ge=0.0)] = 0.0
    pos_weight: Annotated[float, Meta(gt=0.0)] = 1.0  # weight of positive rows in the loss
    seed: int = 0
    validation_split: Annotated[float, Meta(gt=0.0, lt=1.0)] = 0.2
    device: Literal["auto", "cpu", "cuda"] = "auto"
    output: OutputSpec = OutputSpec()
    export: ExportSpec = ExportSpec()
    gates: GateConfig | None = None
    holdout: DataSpec | None = None  # the rows gates are evaluated on
    production_model: str | None = None  # a model directory to beat (relative to the config file)
    tracking: TrackingSpec = TrackingSpec()
    registry: RegistrySpec = RegistrySpec()
    store: str | None = None  # the store (a directory or a postgresql:// URL); default $LOOPSERVE_STORE, else ./.loopserve
    profile_bins: Annotated[int, Meta(ge=2)] = 10


def check(config: TrainConfig, source: str = "train config") -> TrainConfig:
    """Cross-field rules msgspec cannot express; errors name the key."""
    for key, spec in (("data", config.data), ("holdout", config.holdout)):
        if spec is None:
            continue
        if (spec.snapshot is None) == (spec.generator is None):
            raise ConfigError(f"{source}: set exactly one of `snapshot` or `generator` - at `$.{key}`")
        if spec.group is not None and spec.group == spec.label:
            raise ConfigError(f"{source}: the group column cannot be the label {spec.label!r} - at `$.{key}.group`")
        if spec.features is not None:
            for name in (spec.label, spec.group):
                if name is not None and name in spec.features:
                    raise ConfigError(f"{source}: {name!r} is the label or group column and cannot be a model "
                                      f"feature - at `$.{key}.features`")
    if config.gates is not None and config.holdout is None:
        raise ConfigError(f"{source}: gates need held-out rows: set `holdout` (a snapshot or a generator "
                          f"spec) - at `$.holdout`")
    if config.production_model is not None and config.gates is None:
        raise ConfigError(f"{source}: a production model is only compared through gates: set `gates` - at "
                          f"`$.gates`")
    if config.registry.enabled and not config.tracking.enabled:
        raise ConfigError(f"{source}: registering needs the tracked run for lineage: set tracking.enabled: true "
                          f"- at `$.tracking.enabled`")
    return config


def load_train_config(path: str | Path) -> TrainConfig:
    """Read and check a train config; relative paths in it are resolved against its directory."""
    path = Path(path)
    config = check(load_config(path, TrainConfig), str(path))
    return resolve_paths(config, path.parent)


def resolve_paths(config: TrainConfig, base: Path) -> TrainConfig:
    """Output dir, production model and store relative to `base` (the config file's directory)."""
    def rel(p: str | None) -> str | None:
        return None if p is None else os.path.normpath(base / Path(p).expanduser())

    output = msgspec.structs.replace(config.output, dir=rel(config.output.dir))
    store = config.store if config.store and "://" in config.store else rel(config.store)  # a URL stays
    return msgspec.structs.replace(config, output=output, production_model=rel(config.production_model),
                                   store=store)


def config_from_dict(params: dict, source: str = "train config") -> TrainConfig:
    """A TrainConfig from plain data (what a tracked run recorded as its `config` param)."""
    try:
        return check(msgspec.convert(params, TrainConfig), source)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{source}: {e}") from None


def to_dict(config: TrainConfig) -> dict:
    return msgspec.to_builtins(config)
