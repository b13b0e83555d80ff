"""Models served from the registry: `source: registry://NAME@ALIAS` (or `@VERSION`).

A registered version's artifacts are a model version directory: the model file
(model.onnx, model.pt2, model.pt or model.py), `config.yaml` (the model config), and optionally
the drift profile. The server materializes the version (every file's sha256 checked) and
serves it under the registry's version number.

The registry is the source of truth for what is served: the pipeline, in its own process,
only moves aliases, and the server follows. With `canary_alias` set, the version that alias
names is served beside the main one, taking `canary_weight` percent of the traffic, while
the two differ; when they name the same version (the canary promoted, or rolled back), only
that version serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from loopserve.backends import find_model_file, open_backend
from loopserve.config import DriftConfig, FeedbackConfig, load_config
from loopserve.errors import ConfigError
from loopserve.serving.model import CONFIG_NAMES, Model

SCHEME = "registry://"


class ModelSource(Struct, forbid_unknown_fields=True, frozen=True):
    """A model in the server config's `models` list that does not come from the repository dir."""

    name: str
    source: str  # registry://NAME@ALIAS or registry://NAME@VERSION
    canary_alias: str | None = None
    canary_weight: Annotated[float, Meta(gt=0, lt=100)] = 10.0
    # Where the serving side decides, not the training side: these replace the registered
    # version's own config sections.
    drift: DriftConfig | None = None
    feedback: FeedbackConfig | None = None

    @property
    def registry_ref(self) -> tuple[str, str | int]:
        from loopserve.registry import parse_ref

        if not self.source.startswith(SCHEME):
            raise ConfigError(f"model '{self.name}': source {self.source!r} is not supported; expected "
                              f"'{SCHEME}NAME@ALIAS' or '{SCHEME}NAME@VERSION'")
        name, ref = parse_ref(self.source, default="production")
        return name, ref


class RegistryModels:
    """Resolves and builds registry-sourced models. Thread-safety: `wanted` and `build` run on
    any thread, each opening its own store connection (SQLite connections are per thread)."""

    def __init__(self, sources: list[ModelSource], store_root: str | None = None):
        self.sources = {s.name: s for s in sources}
        self.store_root = store_root
        for s in sources:
            s.registry_ref  # noqa: B018  # a bad source stops start-up here

    def wanted(self, name: str) -> dict[int, float | None]:
        """The versions to serve now, each with its traffic weight (None: no split)."""
        from loopserve.registry import current_version
        from loopserve.store import Store

        source = self.sources[name]
        registered, ref = source.registry_ref
        with Store(self.store_root) as store:
            main = current_version(registered, ref, store=store)
            canary = None
            if source.canary_alias:
                try:
                    canary = current_version(registered, source.canary_alias, store=store)
                except LookupError:
                    canary = None  # no canary alias yet
        if canary is None or canary == main:
            return {main: None}
        return {main: 100.0 - source.canary_weight, canary: source.canary_weight}

    def build(self, name: str, version: int) -> tuple[Model, Path]:
        """The version materialized and loaded (not warmed up); and its directory."""
        from loopserve.registry import materialize
        from loopserve.store import Store

        registered, _ = self.sources[name].registry_ref
        with Store(self.store_root) as store:
            directory = materialize(registered, version, store=store)
        config_file = next((directory / n for n in CONFIG_NAMES if (directory / n).is_file()), None)
        if config_file is None:
            raise ConfigError(f"registry model '{registered}' version {version} has no config file; register a "
                              f"directory holding the model file and one of {', '.join(CONFIG_NAMES)}")
        config = msgspec.structs.replace(load_config(config_file), name=name)
        source = self.sources[name]
        config = msgspec.structs.replace(config, drift=source.drift or config.drift,
                                         feedback=source.feedback or config.feedback)
        return Model(config, open_backend(config, find_model_file(directory)), version), directory
