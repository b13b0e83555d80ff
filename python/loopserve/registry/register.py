"""Registering a model version: blobs first, then every row in one transaction.

Artifacts are copied into the blob store before the transaction (slow I/O outside the write
lock); the version, artifact, tag and metric rows are then committed together, with the next
version number read inside the same write transaction, serialized with every other writer of
this model's registry rows (see store.db). A process killed at any point leaves either the whole
version or none of it (at most an unreferenced blob).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path
from typing import Mapping, Sequence

from loopserve.registry.aliases import default_actor, move_alias
from loopserve.registry.errors import RegistryError, UnknownVersion
from loopserve.registry.query import get_version
from loopserve.registry.records import ArtifactFile, ModelVersion
from loopserve.registry.schema import opened, registry_scope
from loopserve.store import Store, transaction, validate_name
from loopserve.tracking.query import resolve_run_id
from loopserve.tracking.times import now

# For crash tests only: "STAGE:MARKER" makes register_model create MARKER and sleep at STAGE
# ("after_blobs" or "before_commit", the latter inside the open transaction).
PAUSE_ENV = "LOOPSERVE_REGISTRY_TEST_PAUSE"

ArtifactPaths = str | os.PathLike | Sequence[str | os.PathLike]


def collect_files(artifact_paths: ArtifactPaths) -> list[tuple[str, Path]]:
    """(relative path, file) for each file: a file is named by its own name, a directory's files by
    their path inside it. Several paths are merged; a relative path given twice is an error."""
    paths = [artifact_paths] if isinstance(artifact_paths, (str, os.PathLike)) else list(artifact_paths)
    found: dict[str, Path] = {}
    for item in paths:
        source = Path(item)
        if source.is_file():
            entries = [(source.name, source)]
        elif source.is_dir():
            entries = [(f.relative_to(source).as_posix(), f) for f in sorted(source.rglob("*")) if f.is_file()]
        else:
            raise RegistryError(f"artifact path {str(source)!r} does not exist (expected a file or a directory)")
        for rel, file in entries:
            if rel in found:
                raise RegistryError(f"artifact {rel!r} is given twice ({found[rel]} and {file})")
            found[rel] = file
    if not found:
        raise RegistryError(f"no files to register in {', '.join(str(p) for p in paths) or '(nothing given)'}")
    return sorted(found.items())


def content_digest(files: Sequence[ArtifactFile]) -> str:
    """One sha256 for a version's content: its files' paths, digests and sizes."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\0{f.sha256}\0{f.size}\n".encode())
    return h.hexdigest()


def _test_pause(stage: str) -> None:
    setting = os.environ.get(PAUSE_ENV, "")
    wanted, _, marker = setting.partition(":")
    if wanted == stage and marker:
        Path(marker).write_text(stage)
        time.sleep(120)


def _check_metrics(metrics: Mapping[str, float] | None) -> dict[str, float]:
    checked = {}
    for key, value in (metrics or {}).items():
        validate_name("metric", key)
        try:
            checked[key] = float(value)
        except (TypeError, ValueError):
            raise RegistryError(f"metric {key!r}: value {value!r} is not a number") from None
        if math.isnan(checked[key]):
            raise RegistryError(f"metric {key!r}: value is NaN; expected a number")
    return checked


def register_model(name: str, artifact_paths: ArtifactPaths, run_id: str | None = None,
                   data_snapshot: str | None = None, parent_version: int | None = None,
                   metrics: Mapping[str, float] | None = None, tags: Mapping[str, str] | None = None,
                   description: str | None = None, alias: str | None = None,
                   store: Store | None = None) -> ModelVersion:
    """Register the files at `artifact_paths` (a file, a directory, or a list of them) as the next
    version of model `name` (created on first use) and return it.

    `run_id` (a tracked run, or a unique prefix of its id) and `data_snapshot` record lineage; the
    data snapshot defaults to the run's. `parent_version` must be an existing version of the
    same model. `alias`, when given, points at the new version in the same transaction.
    """
    validate_name("model", name)
    if alias is not None:
        validate_name("alias", alias)
    tag_rows = [(validate_name("tag", k), str(v)) for k, v in (tags or {}).items()]
    metric_rows = list(_check_metrics(metrics).items())
    if data_snapshot is not None and (not isinstance(data_snapshot, str) or not data_snapshot
                                      or not data_snapshot.isprintable()):
        raise RegistryError(f"invalid data snapshot id {data_snapshot!r}: expected a snapshot id string")
    if parent_version is not None and (not isinstance(parent_version, int) or isinstance(parent_version, bool)):
        raise RegistryError(f"invalid parent version {parent_version!r}: expected a version number")
    files = collect_files(artifact_paths)
    with opened(store) as s:
        stored = []
        for rel, file in files:
            digest = s.blobs.put_file(file)
            stored.append(ArtifactFile(rel, digest, s.blobs.path(digest).stat().st_size))
        digest_all = content_digest(stored)
        total = sum(f.size for f in stored)
        _test_pause("after_blobs")
        db = s.db
        with transaction(db, registry_scope(name)):
            if run_id is not None:
                run_id = resolve_run_id(db, run_id)
                if data_snapshot is None:
                    (data_snapshot,) = db.execute("SELECT data_snapshot FROM runs WHERE id=?", (run_id,)).fetchone()
            db.execute("INSERT INTO registry_models (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                       (name, now()))
            (last,) = db.execute("SELECT COALESCE(MAX(version), 0) FROM registry_versions WHERE name=?",
                                 (name,)).fetchone()
            if parent_version is not None and not 1 <= parent_version <= last:
                raise UnknownVersion(f"parent version {parent_version} of model {name!r} does not exist "
                                     f"(expected one of 1 to {last})" if last else
                                     f"parent version {parent_version}: model {name!r} has no versions yet")
            version = last + 1
            db.execute("INSERT INTO registry_versions (name, version, created_at, run_id, data_snapshot, "
                       "parent_version, description, content_digest, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (name, version, now(), run_id, data_snapshot, parent_version, description, digest_all, total))
            db.executemany("INSERT INTO registry_artifacts (name, version, path, sha256, size) VALUES (?, ?, ?, ?, ?)",
                           [(name, version, f.path, f.sha256, f.size) for f in stored])
            db.executemany("INSERT INTO registry_version_tags (name, version, key, value) VALUES (?, ?, ?, ?)",
                           [(name, version, k, v) for k, v in tag_rows])
            db.executemany("INSERT INTO registry_version_metrics (name, version, key, value) VALUES (?, ?, ?, ?)",
                           [(name, version, k, v) for k, v in metric_rows])
            if alias is not None:
                move_alias(db, name, alias, version, "set", default_actor(), f"registered version {version}")
            _test_pause("before_commit")
        return get_version(name, version, store=s)
