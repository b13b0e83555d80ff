"""Thin adapters from training to the rest of the lifecycle: data snapshots, tracked runs, the
registry, and the drift reference profile.

Each one is optional: training works (and says so) when an area's module is not installed.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from pathlib import Path
from typing import Any, Iterator


def available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and module.startswith(e.name):
            return False
        raise  # a missing dependency inside the module is a real error
    return True


class NullRun:
    """Stands in for a tracked run when tracking is off: logs nowhere, has no id."""

    id = None

    def log_param(self, *a, **k) -> None: ...
    def log_params(self, *a, **k) -> None: ...
    def log_metric(self, *a, **k) -> None: ...
    def log_metrics(self, *a, **k) -> None: ...
    def set_tag(self, *a, **k) -> None: ...
    def log_artifact(self, *a, **k) -> list[str]: return []


@contextlib.contextmanager
def open_store(root: str | os.PathLike | None, needed: bool) -> Iterator[Any]:
    """The lifecycle store (or None when nothing needs it)."""
    if not needed or not available("loopserve.store"):
        yield None
        return
    from loopserve.store import Store

    with Store(root) as store:
        yield store


@contextlib.contextmanager
def tracked_run(store, experiment: str, params: dict, data_snapshot: str | None, tags: dict,
                entrypoint: str) -> Iterator[Any]:
    """A tracked run (`loopserve.tracking`) when a store is open, else a NullRun."""
    if store is None or not available("loopserve.tracking"):
        yield NullRun()
        return
    from loopserve.tracking import start_run

    with start_run(experiment, params=params, data_snapshot=data_snapshot, tags=tags, store=store,
                   entrypoint=entrypoint) as run:
        yield run


def snapshot_columns(store, columns: dict, name: str) -> str | None:
    """Snapshot generated rows so the run records what it trained on; the snapshot id."""
    if store is None or not available("loopserve.data"):
        return None
    from loopserve.data import snapshot

    return snapshot(columns, store=store, name=name).id


def write_profile(version_dir: Path, features, feature_names: list[str], categorical: dict[str, int], outputs,
                  output_name: str, bins: int) -> Path | None:
    """The drift reference profile (`drift_profile.json`) of the training rows and the model's outputs."""
    if not available("loopserve.monitor.profile"):
        return None
    from loopserve.monitor.profile import build_profile

    profile = build_profile(features, feature_names=feature_names, categorical=categorical,
                            outputs=outputs.reshape(-1, 1), output_names=[output_name], bins=bins)
    return profile.save(version_dir / "drift_profile.json")


def resolve_parent(store, name: str, parent: int | str | None) -> int | None:
    """A parent version given as a number or an alias (None if the alias or model does not exist yet)."""
    if parent is None or isinstance(parent, int):
        return parent
    from loopserve.registry import RegistryError, current_version

    try:
        return current_version(name, parent, store=store)
    except RegistryError:
        return None


def register(store, name: str, version_dir: Path, run_id: str | None, data_snapshot: str | None,
             metrics: dict[str, float], tags: dict[str, str], parent: int | str | None, alias: str | None):
    """Register a version directory (model files, profile, gate report) with its lineage."""
    if store is None or not available("loopserve.registry"):
        raise RuntimeError("registry.enabled is set but loopserve.registry is not available")
    from loopserve.registry import register_model

    return register_model(name, version_dir, run_id=run_id, data_snapshot=data_snapshot,
                          parent_version=resolve_parent(store, name, parent), metrics=metrics, tags=tags,
                          alias=alias, store=store)
