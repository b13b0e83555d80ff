"""What registry queries return: typed, immutable records."""

from __future__ import annotations

import msgspec

from loopserve.tracking.records import Run


class ArtifactFile(msgspec.Struct, frozen=True):
    path: str          # relative to the version's directory, '/'-separated
    sha256: str
    size: int


class ModelVersion(msgspec.Struct, frozen=True):
    name: str
    version: int
    created_at: str
    run_id: str | None
    data_snapshot: str | None
    parent_version: int | None
    description: str | None
    content_digest: str
    size: int
    artifacts: list[ArtifactFile] = []
    tags: dict[str, str] = {}
    metrics: dict[str, float] = {}
    aliases: list[str] = []


class ModelSummary(msgspec.Struct, frozen=True):
    name: str
    created_at: str
    latest_version: int
    versions: int
    aliases: dict[str, int] = {}


class AliasEvent(msgspec.Struct, frozen=True):
    """One move of an alias: it pointed at `previous_version` (None: unset) and now at `version`
    (a `delete`: the alias was cleared; `version` is the one it left)."""

    name: str
    alias: str
    version: int
    previous_version: int | None
    action: str        # set | rollback | delete
    set_at: str
    actor: str | None = None
    reason: str | None = None


class Lineage(msgspec.Struct, frozen=True):
    """Where a version came from: its run, data snapshot, and parents (nearest first)."""

    version: ModelVersion
    run: Run | None
    data_snapshot: str | None
    parents: list[ModelVersion] = []
