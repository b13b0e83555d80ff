"""The model repository manager: which models are loaded, loading and unloading them.

Layout (Triton's): <root>/<model>/config.yaml and <root>/<model>/<version>/model.*.
Loading builds sessions and can take seconds: callers run it off the event loop.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import msgspec

from loopserve.errors import LoopserveError, ModelNotFound
from loopserve.model import CONFIG_NAMES, Model

log = logging.getLogger("loopserve.repository")


class ModelState(msgspec.Struct, frozen=True):
    name: str
    version: str = ""
    state: str = "UNAVAILABLE"  # READY | UNAVAILABLE | LOADING
    reason: str = ""


class ModelRepository:
    """Thread-safe: lookups come from the event loop, loads and unloads from worker threads."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else None
        self._lock = threading.Lock()
        self._models: dict[str, Model] = {}  # name -> serving version
        self._failures: dict[str, str] = {}  # name -> why its last load failed

    def names_on_disk(self) -> list[str]:
        if self.root is None:
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and any((p / n).is_file() for n in CONFIG_NAMES))

    def add(self, model: Model) -> None:
        """Serves a model built in Python (not from the repository directory)."""
        with self._lock:
            old = self._models.get(model.name)
            self._models[model.name] = model
            self._failures.pop(model.name, None)
        if old is not None and old is not model:
            old.close()

    def get(self, name: str, version: str | None = None) -> Model:
        model = self._models.get(name)
        if model is None:
            reason = self._failures.get(name)
            raise ModelNotFound(f"unknown model '{name}'" + (f" (its last load failed: {reason})" if reason else ""))
        if version and version != str(model.version):
            raise ModelNotFound(f"model '{name}' has no version '{version}' loaded (loaded: '{model.version}')")
        return model

    def models(self) -> list[Model]:
        return list(self._models.values())

    def load(self, name: str) -> Model:
        """Loads (or reloads) a model from the repository directory. A failed load leaves
        whatever was serving under that name untouched and remembers the reason."""
        if self.root is None:
            raise ModelNotFound(f"cannot load '{name}': the server has no model repository")
        model_dir = self.root / name
        if "/" in name or name.startswith(".") or not model_dir.is_dir():
            raise ModelNotFound(f"model '{name}' is not in the repository {self.root}")
        try:
            model = Model.load(model_dir, name=name)
        except LoopserveError as e:
            self._failures[name] = str(e)
            log.error("model load failed", extra={"model": name, "reason": str(e)})
            raise
        self.add(model)
        log.info("model loaded", extra={"model": name, "version": model.version})
        return model

    def unload(self, name: str) -> None:
        """Stops serving `name`; requests already queued still finish."""
        with self._lock:
            model = self._models.pop(name, None)
        if model is None:
            raise ModelNotFound(f"unknown model '{name}'")
        model.close()
        log.info("model unloaded", extra={"model": name})

    def index(self) -> list[ModelState]:
        names = sorted(set(self.names_on_disk()) | set(self._models))
        out = []
        for name in names:
            model = self._models.get(name)
            if model is not None:
                out.append(ModelState(name, str(model.version), "READY"))
            else:
                out.append(ModelState(name, "", "UNAVAILABLE", self._failures.get(name, "")))
        return out

    def close(self) -> None:
        with self._lock:
            models, self._models = list(self._models.values()), {}
        for model in models:
            model.close()
