"""Reading the registry: versions, models, lineage; tags and metrics on versions."""

from __future__ import annotations

from loopserve.registry.errors import RegistryError
from loopserve.registry.records import ArtifactFile, Lineage, ModelSummary, ModelVersion
from loopserve.registry.refs import LATEST, check_model, resolve_version
from loopserve.registry.schema import opened, snapshot_read
from loopserve.store import Store, transaction, validate_name
from loopserve.store.db import Database
from loopserve.tracking.errors import RunNotFound
from loopserve.tracking.query import get_run


def _version(db: Database, name: str, version: int) -> ModelVersion:
    row = db.execute("SELECT * FROM registry_versions WHERE name=? AND version=?", (name, version)).fetchone()
    key = (name, version)
    return ModelVersion(
        name=name, version=version, created_at=row["created_at"], run_id=row["run_id"],
        data_snapshot=row["data_snapshot"], parent_version=row["parent_version"], description=row["description"],
        content_digest=row["content_digest"], size=row["size"],
        artifacts=[ArtifactFile(*r) for r in db.execute(
            "SELECT path, sha256, size FROM registry_artifacts WHERE name=? AND version=? ORDER BY path", key)],
        tags=dict(db.execute("SELECT key, value FROM registry_version_tags WHERE name=? AND version=? ORDER BY key",
                             key).fetchall()),
        metrics=dict(db.execute("SELECT key, value FROM registry_version_metrics WHERE name=? AND version=? "
                                "ORDER BY key", key).fetchall()),
        aliases=[a for (a,) in db.execute("SELECT alias FROM registry_aliases WHERE name=? AND version=? "
                                          "ORDER BY alias", key)])


def get_version(name: str, ref: int | str = LATEST, store: Store | None = None) -> ModelVersion:
    """A version of model `name`: `ref` is a version number, an alias, or 'latest'."""
    validate_name("model", name)
    with opened(store) as s, snapshot_read(s):
        return _version(s.db, name, resolve_version(s.db, name, ref))


def current_version(name: str, ref: int | str, store: Store | None = None) -> int:
    """The version number `ref` stands for now: one indexed lookup, cheap enough to poll every second
    (pass an open `store` when polling)."""
    validate_name("model", name)
    with opened(store) as s:
        return resolve_version(s.db, name, ref)


def list_versions(name: str, store: Store | None = None) -> list[ModelVersion]:
    """Every version of model `name`, oldest first."""
    validate_name("model", name)
    with opened(store) as s, snapshot_read(s):
        check_model(s.db, name)
        numbers = [v for (v,) in s.db.execute("SELECT version FROM registry_versions WHERE name=? ORDER BY version",
                                              (name,))]
        return [_version(s.db, name, v) for v in numbers]


def list_models(store: Store | None = None) -> list[ModelSummary]:
    """Every registered model with its latest version and current aliases."""
    with opened(store) as s, snapshot_read(s):
        db = s.db
        aliases: dict[str, dict[str, int]] = {}
        for name, alias, version in db.execute("SELECT name, alias, version FROM registry_aliases ORDER BY alias"):
            aliases.setdefault(name, {})[alias] = version
        rows = db.execute("SELECT m.name, m.created_at, MAX(v.version), COUNT(v.version) FROM registry_models m "
                          "JOIN registry_versions v ON v.name = m.name GROUP BY m.name ORDER BY m.name").fetchall()
        return [ModelSummary(n, c, last, count, aliases.get(n, {})) for n, c, last, count in rows]


def lineage(name: str, ref: int | str, store: Store | None = None) -> Lineage:
    """Where a version came from: the run that trained it, its data snapshot (the version's, else
    the run's), and its parent versions, nearest first."""
    with opened(store) as s:
        version = get_version(name, ref, store=s)
        run = None
        if version.run_id is not None:
            try:
                run = get_run(version.run_id, store=s)
            except RunNotFound:
                run = None
        parents: list[ModelVersion] = []
        seen = {version.version}
        parent = version.parent_version
        while parent is not None and parent not in seen:  # parents are older, but guard against loops
            seen.add(parent)
            parents.append(get_version(name, parent, store=s))
            parent = parents[-1].parent_version
        snapshot = version.data_snapshot or (run.data_snapshot if run else None)
        return Lineage(version=version, run=run, data_snapshot=snapshot, parents=parents)


def set_version_tag(name: str, ref: int | str, key: str, value: str, store: Store | None = None) -> None:
    """Set a tag on a version (a later value replaces an earlier one)."""
    validate_name("tag", key)
    with opened(store) as s, transaction(s.db):
        version = resolve_version(s.db, name, ref)
        s.db.execute("INSERT INTO registry_version_tags (name, version, key, value) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT (name, version, key) DO UPDATE SET value = excluded.value",
                     (name, version, key, str(value)))


def set_version_metric(name: str, ref: int | str, key: str, value: float, store: Store | None = None) -> None:
    """Record a metric on a version (an evaluation after registering, say)."""
    validate_name("metric", key)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RegistryError(f"metric {key!r}: value {value!r} is not a number") from None
    with opened(store) as s, transaction(s.db):
        version = resolve_version(s.db, name, ref)
        s.db.execute("INSERT INTO registry_version_metrics (name, version, key, value) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT (name, version, key) DO UPDATE SET value = excluded.value",
                     (name, version, key, number))
