"""The pipeline config (`loopserve pipeline run|watch CONFIG`): msgspec Structs from YAML/TOML/JSON.

    model: fraud                       # the served name and the registry name
    server: http://127.0.0.1:8000      # the server it reads drift, feedback and traffic from
    # replicas: [dns://loopserve-replicas:8000]   # or a fleet, merged (then `server` is unused)
    train: train_fraud.yaml            # the training template (data and holdout are replaced)
    retrain_data: {feedback_dir: feedback, min_rows: 2000}   # or [feedback/replica-*] for a fleet
    triggers: {drift_windows: 2, accuracy_floor: 0.9, cooldown_s: 120}
    canary: {window_s: 30, min_requests: 300}

Relative paths are taken from the config file's directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from loopserve.config import load_config
from loopserve.pipeline.records import DEFAULT_LEASE_S
from loopserve.pipeline.trigger import TriggerConfig
from loopserve.serving.canary import CanaryRule


class RetrainData(Struct, forbid_unknown_fields=True, frozen=True):
    """Where retraining rows come from: the labelled examples the server spills from feedback."""

    # The server's feedback.spill_dir, or a fleet's: a list of directories and/or glob patterns
    # (`feedback/replica-*`), read together (see loopserve.monitor.labelled.spill_dirs).
    feedback_dir: str | list[str] = "feedback"
    min_rows: Annotated[int, Meta(ge=10)] = 2000  # fewer labelled rows: the collect step fails
    max_rows: Annotated[int, Meta(ge=10)] = 50_000  # the most recent ones
    holdout_fraction: Annotated[float, Meta(gt=0, lt=1)] = 0.25  # the newest rows, held out for the gates
    # When drift or accuracy fired the run, only rows predicted after the change point: the world
    # the new model must fit. Their labels come late: the collect step waits up to wait_s (the
    # label horizon) for min_rows of them.
    since_change: bool = True
    wait_s: Annotated[float, Meta(ge=0)] = 120.0


class Validation(Struct, forbid_unknown_fields=True, frozen=True):
    """Rules for the new data, inferred from the production version's training snapshot. Loose
    on purpose: they stop broken data (types, nulls, absurd values), not the drift being fixed."""

    range_margin: Annotated[float, Meta(ge=0)] = 2.0  # of the reference span, on each side
    max_mean_shift: Annotated[float, Meta(gt=0)] = 5.0  # reference standard deviations
    max_std_ratio: Annotated[float, Meta(gt=1)] = 5.0
    null_slack: Annotated[float, Meta(ge=0, le=1)] = 0.05


_RULE = CanaryRule()  # the margins' defaults are the rule's own


class CanaryConfig(Struct, forbid_unknown_fields=True, frozen=True):
    """The canary compared with production on live traffic before promotion: error rate and p99
    by loopserve.serving.canary.CanaryRule, and feedback accuracy."""

    alias: str = "canary"  # the server's source for the model must name it as canary_alias
    window_s: Annotated[float, Meta(gt=0)] = 30.0  # at most this long...
    min_requests: Annotated[int, Meta(ge=1)] = 200  # ...and until the canary answered this many
    min_labels: Annotated[int, Meta(ge=0)] = 100  # and got this many labels (0: accuracy not compared)
    max_error_rate_increase: Annotated[float, Meta(ge=0)] = _RULE.max_error_rate_increase
    max_p99_ratio: Annotated[float, Meta(gt=0)] = _RULE.max_p99_ratio  # canary p99 <= this x production's
    accuracy_margin: Annotated[float, Meta(ge=0)] = 0.02  # canary accuracy >= production's - margin
    load_timeout_s: Annotated[float, Meta(gt=0)] = 60.0  # for the server to load the canary
    poll_s: Annotated[float, Meta(gt=0)] = 1.0

    @property
    def rule(self) -> CanaryRule:
        return CanaryRule(min_requests=self.min_requests, max_error_rate_increase=self.max_error_rate_increase,
                          max_p99_ratio=self.max_p99_ratio)


class PipelineConfig(Struct, forbid_unknown_fields=True, frozen=True):
    model: str
    train: str
    server: str = "http://127.0.0.1:8000"
    # A fleet: the replicas whose drift and live accuracy are merged for the triggers and the
    # canary (base URLs and/or dns://NAME:PORT, see loopserve.fleet); `server` is then unused.
    replicas: list[str] | None = None
    store: str | None = None  # a directory or a postgresql:// URL (default $LOOPSERVE_STORE)
    production_alias: str = "production"
    retrain_data: RetrainData = RetrainData()
    validation: Validation = Validation()
    triggers: TriggerConfig = TriggerConfig()
    canary: CanaryConfig = CanaryConfig()
    poll_s: Annotated[float, Meta(gt=0)] = 2.0  # how often `watch` reads the server
    # A run holds its model's lease (one live run per model), renewed every lease_s / 4 while it
    # runs; a lease not renewed for lease_s is a dead process's, taken over by the next pipeline.
    lease_s: Annotated[float, Meta(ge=1)] = DEFAULT_LEASE_S
    # Training shares the machine with serving: the pipeline process runs at this nice level and
    # with this many torch threads (0: half the cores, at least 1), so serving keeps its CPU.
    nice: Annotated[int, Meta(ge=0, le=19)] = 10
    train_threads: Annotated[int, Meta(ge=0)] = 0
    work_dir: str = "pipeline-work"  # candidate model directories


def load_pipeline_config(path: str | Path) -> PipelineConfig:
    path = Path(path)
    config = load_config(path, PipelineConfig)
    base = path.parent

    def rel(p: str | None) -> str | None:
        return p if p is None or "://" in p or Path(p).is_absolute() else str(base / p)

    feedback = config.retrain_data.feedback_dir
    feedback = rel(feedback) if isinstance(feedback, str) else [rel(p) for p in feedback]
    data = msgspec.structs.replace(config.retrain_data, feedback_dir=feedback)
    return msgspec.structs.replace(config, train=rel(config.train), store=rel(config.store) if config.store else None,
                                   work_dir=rel(config.work_dir), retrain_data=data)
