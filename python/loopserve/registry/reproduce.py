"""Re-running the training that made a model version, and comparing its metrics.

A version's run recorded the code version (git sha, dirty flag), the params, the data snapshot
id and an entrypoint "module:function". Reproducing calls `function(params, data_snapshot, run)`
inside a new tracked run with the same params and snapshot, then compares each recorded final
metric with the reproduced one.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from typing import Any, Callable, Mapping

import msgspec

from loopserve.registry.errors import RegistryError, ReproductionRefused
from loopserve.registry.query import get_version
from loopserve.registry.schema import opened
from loopserve.store import Store
from loopserve.tracking.env import code_version
from loopserve.tracking.query import get_run
from loopserve.tracking.records import Run
from loopserve.tracking.run import check_entrypoint, start_run


class MetricCheck(msgspec.Struct, frozen=True):
    name: str
    recorded: float
    reproduced: float | None
    relative_difference: float | None
    ok: bool


class Reproduction(msgspec.Struct, frozen=True):
    name: str
    version: int
    recorded_run: Run
    reproduced_run: Run
    warnings: list[str]
    metrics: list[MetricCheck]
    tolerance: float
    ok: bool


def load_entrypoint(entrypoint: str, cwd: str | None = None) -> Callable[..., Any]:
    """Import `module:function`; the working directory is tried as an import root too (as `python -m` does)."""
    module_name, _, attr = check_entrypoint(entrypoint).partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        root = cwd or os.getcwd()
        if e.name is None or not module_name.startswith(e.name) or root in sys.path:
            raise RegistryError(f"cannot import the entrypoint {entrypoint!r}: {e}") from None
        sys.path.insert(0, root)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e2:
            raise RegistryError(f"cannot import the entrypoint {entrypoint!r}: {e2}") from None
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise RegistryError(f"entrypoint {entrypoint!r}: module {module_name!r} has no {attr!r}") from None
    if not callable(target):
        raise RegistryError(f"entrypoint {entrypoint!r} is not callable")
    return target


def code_warnings(recorded: Run, cwd: str | os.PathLike | None = None) -> list[str]:
    """Why the code here may not be the code the run used (empty if it is the same clean commit)."""
    now = code_version(cwd)
    then = recorded.code
    problems = []
    if then.git_sha is None:
        problems.append(f"run {recorded.id} recorded no git commit (it ran outside a git work tree)")
    elif now.git_sha is None:
        problems.append(f"the working directory is not in a git work tree; run {recorded.id} ran at commit "
                        f"{then.git_sha[:12]}")
    elif now.git_sha != then.git_sha:
        problems.append(f"the code is at commit {now.git_sha[:12]} but run {recorded.id} ran at {then.git_sha[:12]}")
    if then.git_dirty:
        problems.append(f"run {recorded.id} ran with uncommitted changes: its exact code is not recorded")
    if now.git_dirty:
        problems.append(f"the working tree {now.git_root} has uncommitted changes")
    return problems


def _check(name: str, recorded: float, reproduced: float | None, tolerance: float) -> MetricCheck:
    if reproduced is None:
        return MetricCheck(name, recorded, None, None, False)
    if recorded == reproduced:
        return MetricCheck(name, recorded, reproduced, 0.0, True)
    scale = max(abs(recorded), abs(reproduced))
    diff = abs(recorded - reproduced) / scale if math.isfinite(scale) and scale > 0 else math.inf
    return MetricCheck(name, recorded, reproduced, diff, diff <= tolerance)


def reproduce(name: str, ref: int | str, force: bool = False, tolerance: float = 1e-6,
              store: Store | None = None, cwd: str | os.PathLike | None = None) -> Reproduction:
    """Re-run the training recorded for version `ref` of model `name` and compare its final metrics.

    Refuses (ReproductionRefused) when the code here is not the recorded clean commit, unless
    `force`; the reasons are then returned as `warnings`. A metric agrees when its relative
    difference is at most `tolerance`.
    """
    if not tolerance >= 0:
        raise RegistryError(f"invalid tolerance {tolerance!r}: expected a non-negative number")
    with opened(store) as s:
        version = get_version(name, ref, store=s)
        if version.run_id is None:
            raise RegistryError(f"model {name!r} version {version.version} has no recorded run: register it "
                                f"with run_id= (or --run) to make it reproducible")
        recorded = get_run(version.run_id, store=s)
        if recorded.entrypoint is None:
            raise RegistryError(f"run {recorded.id} (model {name!r} version {version.version}) recorded no "
                                f"entrypoint: start_run(..., entrypoint='module:function') makes it reproducible")
        warnings = code_warnings(recorded, cwd)
        if warnings and not force:
            raise ReproductionRefused("refusing to reproduce: " + "; ".join(warnings) +
                                      ". Check out the recorded commit, or pass --force (force=True) to run anyway")
        function = load_entrypoint(recorded.entrypoint, None if cwd is None else str(cwd))
        tags = {"reproduces": recorded.id, "model": f"{name}@{version.version}"}
        with start_run(recorded.experiment, params=recorded.params, data_snapshot=recorded.data_snapshot,
                       tags=tags, store=s, entrypoint=recorded.entrypoint, cwd=cwd) as run:
            returned = function(dict(recorded.params), recorded.data_snapshot, run)
            if isinstance(returned, Mapping):
                run.log_metrics(returned)
        reproduced = get_run(run.id, store=s)
        checks = [_check(k, v, reproduced.metrics.get(k), tolerance) for k, v in sorted(recorded.metrics.items())]
        return Reproduction(name=name, version=version.version, recorded_run=recorded, reproduced_run=reproduced,
                            warnings=warnings, metrics=checks, tolerance=tolerance, ok=all(c.ok for c in checks))
