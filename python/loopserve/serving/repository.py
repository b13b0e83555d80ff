"""The model repository manager: which models and versions are loaded, loading and unloading.

Layout (Triton's): <root>/<model>/config.yaml and <root>/<model>/<version>/model.*.
Loading is two steps: `prepare` builds (and warms up) the versions a model's policy wants,
off the event loop, since that takes seconds; `install` then swaps them in on the loop, at
once for every request. A load that fails anywhere leaves what serves untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Iterable, Iterator

import msgspec
import numpy as np

from loopserve.backends import find_model_file, open_backend
from loopserve.backends.base import NUMPY_DTYPES
from loopserve.config import ModelConfig, load_config
from loopserve.errors import ConfigError, LoopserveError, ModelNotFound
from loopserve.serving.model import CONFIG_NAMES, Model, available_versions, fingerprint
from loopserve.serving.registry_source import RegistryModels
from loopserve.serving.router import VersionRouter, check_traffic
from loopserve.serving.services import LoadHook, UnloadHook, VersionServices

log = logging.getLogger("loopserve.repository")


class ModelState(msgspec.Struct, frozen=True):
    name: str
    version: str = ""
    state: str = "UNAVAILABLE"  # READY | UNAVAILABLE
    reason: str = ""


class Prepared(msgspec.Struct):
    """A model's versions built and warmed up, ready to install."""

    name: str
    config: ModelConfig
    versions: dict[int, Model]
    weights: dict[int, float] | None = None  # None: the config's traffic weights
    fingerprints: dict[int, tuple] = {}  # version -> its directory's fingerprint when built


class ModelRepository:
    """Thread-safety: `prepare` runs on any thread; everything else on the event loop's
    thread (or before the loop starts).

    Per-version services attach through hooks: each load hook is called with every new version
    (and its directory) once it is built and warmed up, before it serves; each unload hook with
    every version as it retires, once its last request has finished (its batcher has run what it
    had queued and stopped), before it closes.
    `services` (drift monitors and the feedback record) come first; `on_version_load` and
    `on_version_unload` add more."""

    def __init__(self, root: str | Path | None = None, registry: RegistryModels | None = None, *,
                 services: VersionServices | None = None, on_version_load: Iterable[LoadHook] = (),
                 on_version_unload: Iterable[UnloadHook] = ()):
        self.root = Path(root) if root else None
        self.registry = registry  # models served from the registry (registry://NAME@ALIAS)
        self.services = services or VersionServices()
        self.on_version_load: list[LoadHook] = [*self.services.load_hooks, *on_version_load]
        self.on_version_unload: list[UnloadHook] = [*on_version_unload, *self.services.unload_hooks]
        # Called with each retiring version before it stops: the engine's native routes wait there
        # until no thread can still submit a request to it.
        self.before_version_stop: list[UnloadHook] = []
        self.routers: dict[str, VersionRouter] = {}
        # Called with a model's router after each change of what serves it (shared by all routers).
        self.on_route_change: list = []
        self._configs: dict[str, ModelConfig] = {}
        self._fingerprints: dict[str, dict[int, tuple]] = {}  # name -> version -> its directory's when built
        self._failures: dict[str, str] = {}  # name -> why its last load failed
        # One change at a time per model (see load_async): created on the loop's thread.
        self._changing: dict[str, asyncio.Lock] = {}

    def names_on_disk(self) -> list[str]:
        if self.root is None:
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and any((p / n).is_file() for n in CONFIG_NAMES))

    # -- lookups --------------------------------------------------------------------------

    def router(self, name: str) -> VersionRouter:
        router = self.routers.get(name)
        if router is None or not router.versions:
            reason = self._failures.get(name)
            raise ModelNotFound(f"unknown model '{name}'" + (f" (its last load failed: {reason})" if reason else ""))
        return router

    def get(self, name: str, version: str | None = None) -> Model:
        """A loaded version: the named one, or the stable one (what rollback returns to)."""
        router = self.router(name)
        if version:
            model = router.versions.get(int(version)) if version.isascii() and version.isdigit() else None
            if model is None:
                raise ModelNotFound(f"model '{name}' has no version '{version}' loaded "
                                    f"(loaded: {sorted(router.versions)})")
            return model
        return router.versions.get(router.stable) or router.versions[max(router.versions)]

    def models(self) -> list[Model]:
        """Every loaded version of every model."""
        return [m for r in self.routers.values() for _, m in sorted(r.versions.items())]

    # -- changes --------------------------------------------------------------------------

    def add(self, model: Model) -> None:
        """Serves a model version built in Python (not from the repository directory)."""
        self._loaded([(model, None)])
        router = self.routers.setdefault(model.name, VersionRouter(model.name, self._retire, self.on_route_change))
        router.install({**router.versions, model.version: model})
        self._failures.pop(model.name, None)

    def prepare(self, name: str) -> Prepared:
        """Builds the versions `name`'s version policy wants, reusing those already serving
        with the same config and unchanged files, and warms the new ones up. Any thread."""
        if self.registry is not None and name in self.registry.sources:
            return self._prepare_from_registry(name)
        if self.root is None:
            raise ModelNotFound(f"cannot load '{name}': the server has no model repository")
        model_dir = self.root / name
        if "/" in name or name.startswith(".") or not model_dir.is_dir():
            raise ModelNotFound(f"model '{name}' is not in the repository {self.root}")
        with self._building(name) as built:
            config_file = next((model_dir / n for n in CONFIG_NAMES if (model_dir / n).is_file()), None)
            if config_file is None:
                raise ConfigError(f"{model_dir}: no config file; expected one of {', '.join(CONFIG_NAMES)}")
            config = msgspec.structs.replace(load_config(config_file), name=name)
            wanted = config.version_policy.choose(available_versions(model_dir))
            if not wanted:
                raise ModelNotFound(f"{model_dir}: no version directory matches its version_policy")
            check_traffic(name, wanted, dict(config.traffic.weights), config.traffic.shadow)  # before any build
            serving = self.routers[name].versions if name in self.routers else {}
            same_config = self._configs.get(name) == config
            built_from = self._fingerprints.get(name, {})
            versions, new, prints = {}, [], {}
            for v in wanted:
                try:  # before the build: a file changed while it ran is seen by the next load
                    prints[v] = fingerprint(model_dir / str(v))
                except OSError:
                    prints[v] = None  # gone or unreadable: built below, which says why
                if same_config and v in serving and prints[v] is not None and built_from.get(v) == prints[v]:
                    versions[v] = serving[v]
                    continue
                model = Model(config, open_backend(config, find_model_file(model_dir / str(v))), v)
                built.append(model)
                warm_up(model, model_dir)
                versions[v] = model
                new.append((model, model_dir / str(v)))
            self._loaded(new)  # after warm-up: its zeros are not traffic
        return Prepared(name, config, versions, fingerprints=prints)

    def _prepare_from_registry(self, name: str) -> Prepared:
        """The versions the registry's aliases name now (see registry_source.py)."""
        serving = self.routers[name].versions if name in self.routers else {}
        with self._building(name) as built:
            wanted = self.registry.wanted(name)
            weights = {v: w for v, w in wanted.items() if w is not None}
            versions, config, new = {}, None, []
            for v in wanted:
                if v in serving:
                    versions[v] = serving[v]
                else:
                    model, directory = self.registry.build(name, v)
                    built.append(model)
                    warm_up(model, directory)
                    versions[v] = model
                    new.append((model, directory))
                config = config or versions[v].config
            check_traffic(name, versions, weights, config.traffic.shadow if config else ())
            self._loaded(new)
        return Prepared(name, config, versions, weights)

    @contextlib.contextmanager
    def _building(self, name: str) -> Iterator[list[Model]]:
        """The models a load builds: if the load fails, they are closed and its reason recorded
        (what serves keeps serving)."""
        built: list[Model] = []
        try:
            yield built
        except BaseException as e:
            for model in built:
                self._retire(model)
            if isinstance(e, LoopserveError):
                self._failures[name] = str(e)
                log.error("model load failed", extra={"model": name, "reason": str(e)})
            raise

    def _loaded(self, versions: list[tuple[Model, Path | None]]) -> None:
        """Runs the load hooks, hook by hook: one that refuses a version (a drift profile that
        does not fit) does so before any later hook has seen a version of this load."""
        for hook in self.on_version_load:
            for model, directory in versions:
                hook(model, directory)

    def _retire(self, model: Model) -> None:
        """Runs what the version had queued (requests routed natively are not counted in flight
        by its router), then the unload hooks, then closes it (blocking)."""
        for hook in self.before_version_stop:
            hook(model)
        model.stop()
        for hook in self.on_version_unload:
            hook(model)
        model.close()

    def install(self, prepared: Prepared) -> VersionRouter:
        """Swaps the prepared versions in; versions no longer wanted retire."""
        name, config = prepared.name, prepared.config
        router = self.routers.setdefault(name, VersionRouter(name, self._retire, self.on_route_change))
        weights = prepared.weights if prepared.weights is not None else dict(config.traffic.weights)
        router.install(prepared.versions, weights, config.traffic.shadow)
        self._configs[name] = config
        self._fingerprints[name] = prepared.fingerprints
        self._failures.pop(name, None)
        log.info("model loaded", extra={"model": name, "versions": sorted(prepared.versions)})
        return router

    def load(self, name: str) -> VersionRouter:
        """prepare + install, for callers on the loop's thread or before it runs."""
        return self.install(self.prepare(name))

    async def load_async(self, name: str) -> VersionRouter:
        """prepare (in a thread) + install (on the loop), one change of `name` at a time.

        Serialized because `prepare` reuses the versions serving when it started: an unload
        between it and `install` would close them, and install would put closed versions back
        (READY, yet every request refused). On the loop's thread."""
        async with self._lock(name):
            prepared = await asyncio.to_thread(self.prepare, name)
            return self.install(prepared)

    async def unload_async(self, name: str) -> None:
        """unload, after any load of `name` in progress has installed. On the loop's thread."""
        async with self._lock(name):
            self.unload(name)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._changing.setdefault(name, asyncio.Lock())

    def unload(self, name: str) -> None:
        """Stops serving `name`; requests in flight still finish."""
        router = self.routers.pop(name, None)
        self._configs.pop(name, None)
        self._fingerprints.pop(name, None)
        if router is None or not router.versions:
            raise ModelNotFound(f"unknown model '{name}'")
        router.unload()
        log.info("model unloaded", extra={"model": name})

    def index(self) -> list[ModelState]:
        out = []
        for name in sorted(set(self.names_on_disk()) | set(self.routers)):
            router = self.routers.get(name)
            if router is not None and router.versions:
                out.extend(ModelState(name, str(v), "READY") for v in sorted(router.versions))
            if name in self._failures or router is None or not router.versions:
                # A failed load leaves what served serving; its reason is shown beside it.
                out.append(ModelState(name, "", "UNAVAILABLE", self._failures.get(name, "")))
        return out

    def close(self) -> None:
        """Stops every version (blocking); for shutdown."""
        models = self.models()
        self.routers = {}
        for model in models:
            self._retire(model)


def warm_up(model: Model, model_dir: Path) -> None:
    """Runs the config's warm-up requests: zero-filled ones of `warmup_rows` rows each, then
    the sample request in `warmup_file`."""
    requests = []
    for rows in model.config.warmup_rows:
        inputs = {}
        for t in model.inputs:
            if any(d < 0 for d in t.dims) or t.datatype == "BYTES":
                raise ConfigError(f"model '{model.name}': warm-up needs fixed-size inputs; "
                                  f"'{t.name}' is {t.datatype} {t.dims}")
            shape = ([rows] if model.config.max_batch_size > 0 else []) + list(t.dims)
            inputs[t.name] = np.zeros(shape, NUMPY_DTYPES[t.datatype])
        requests.append(inputs)
    if model.config.warmup_file:
        path = model_dir / model.config.warmup_file
        try:
            with np.load(path, allow_pickle=False) as sample:
                requests.append({name: sample[name] for name in sample.files})
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: cannot read the warm-up sample: {e}") from None
    for inputs in requests:
        try:
            model.infer_sync(inputs)
        except LoopserveError as e:
            raise ConfigError(f"model '{model.name}' version {model.version} failed its warm-up: {e}") from None
