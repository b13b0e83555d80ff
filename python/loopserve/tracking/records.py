"""What tracking queries return: typed, immutable records."""

from __future__ import annotations

from typing import Any

import msgspec


class MetricPoint(msgspec.Struct, frozen=True):
    step: int
    value: float
    logged_at: str


class RunArtifact(msgspec.Struct, frozen=True):
    name: str
    sha256: str
    size: int


class CodeVersion(msgspec.Struct, frozen=True):
    """The git commit of the working directory's repository; None fields outside git."""

    git_sha: str | None = None
    git_dirty: bool | None = None
    git_root: str | None = None


class Run(msgspec.Struct, frozen=True):
    """A tracked run. `metrics` holds each metric's last value (highest step)."""

    id: str
    experiment: str
    status: str
    start_time: str
    end_time: str | None
    error: str | None
    data_snapshot: str | None
    entrypoint: str | None
    code: CodeVersion
    python: str
    platform: str
    packages: dict[str, str]
    command: list[str]
    cwd: str
    params: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    artifacts: list[RunArtifact] = []


class RunComparison(msgspec.Struct, frozen=True):
    """Runs side by side: each param and final metric as one value per run (None if absent)."""

    runs: list[Run]
    params: dict[str, list[Any]]
    metrics: dict[str, list[float | None]]
    differing_params: list[str]
    differing_metrics: list[str]
