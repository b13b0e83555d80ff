"""The versions of one model behind its name: which version answers a request, which
versions get a shadow copy, and retiring a version once its last request has finished.

A plain-Python object on purpose: routing is a weighted choice per request (a hash or a
random draw and a short scan), cheaper than the call into native code it would take to make
it there, and every mutation happens on the event loop's thread, so the swap of the routing
table is atomic for every request without a lock. Loading (slow) happens elsewhere and hands
finished Models in through `install`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
import zlib
from collections import Counter
from typing import Callable, Iterable

import msgspec

from loopserve.errors import InvalidInput, ModelNotFound
from loopserve.serving.model import Model

log = logging.getLogger("loopserve.router")


class TrafficState(msgspec.Struct, frozen=True):
    """What GET/POST /v2/models/{m}/traffic shows."""

    versions: list[int]
    weights: dict[int, float]  # normalised shares of the versions that answer
    shadow: list[int]
    stable: int  # the version rollback returns to


def check_traffic(name: str, versions: Iterable[int], weights: dict[int, float], shadow: Iterable[int]) -> None:
    """Refuses (InvalidInput) traffic that names a version not among `versions`, weights that are
    not finite or add up to 0, and a version that would both answer and shadow."""
    versions = sorted(versions)
    shadow = list(shadow)
    for v in list(weights) + shadow:
        if v not in versions:
            raise InvalidInput(f"model '{name}' has no version {v} loaded (loaded: {versions})")
    odd = sorted(v for v, w in weights.items() if not math.isfinite(w))
    if odd:
        raise InvalidInput(f"traffic weights of model '{name}' must be finite numbers; "
                           f"version(s) {odd} have {[weights[v] for v in odd]}")
    if weights and sum(weights.values()) <= 0:
        raise InvalidInput(f"traffic weights of model '{name}' must add up to more than 0")
    both = sorted(v for v in shadow if weights.get(v, 0) > 0)
    if both:
        raise InvalidInput(f"version(s) {both} of model '{name}' cannot both answer and shadow")


class VersionRouter:
    """Thread-safety: call everything from the event loop's thread (`retire`, which blocks
    until queued requests are done, runs on a thread of its own)."""

    def __init__(self, name: str, retire: Callable[[Model], None] = Model.close,
                 on_change: list[Callable[["VersionRouter"], None]] | None = None):
        self.name = name
        self._retire_version = retire  # closes a version whose last request has finished
        # Called after every change of the routing state (the engine's native routes follow it).
        self._on_change = on_change if on_change is not None else []
        self.versions: dict[int, Model] = {}
        self._cumulative: list[tuple[float, Model]] = []  # (upper bound in [0, 1), version)
        self._weights: dict[int, float] = {}
        self._shadows: tuple[Model, ...] = ()
        self.stable = 0
        self._inflight: Counter[Model] = Counter()
        self._retired: set[Model] = set()

    # -- per request ----------------------------------------------------------------------

    def acquire(self, version: str | None = None, key: str | None = None) -> Model:
        """The version that answers this request, counted in flight until `release`."""
        if version:
            model = self.versions.get(int(version)) if version.isascii() and version.isdigit() else None
            if model is None:
                raise ModelNotFound(f"model '{self.name}' has no version '{version}' loaded "
                                    f"(loaded: {sorted(self.versions)})")
        else:
            if not self._cumulative:
                raise ModelNotFound(f"model '{self.name}' has no version taking traffic")
            draw = (zlib.crc32(key.encode()) % 1_000_000) / 1_000_000 if key else random.random()
            model = self._cumulative[-1][1]
            for bound, candidate in self._cumulative:
                if draw < bound:
                    model = candidate
                    break
        self._inflight[model] += 1
        return model

    def hold(self, model: Model) -> None:
        """Counts a request in flight on `model` (a shadow copy) until `release`."""
        self._inflight[model] += 1

    def release(self, model: Model) -> None:
        self._inflight[model] -= 1
        if self._inflight[model] <= 0:
            del self._inflight[model]
            if model in self._retired:
                self._close(model)

    def shadows(self, answering: Model) -> tuple[Model, ...]:
        return tuple(m for m in self._shadows if m is not answering)

    # -- changes --------------------------------------------------------------------------

    def install(self, versions: dict[int, Model], weights: dict[int, float] | None = None,
                shadow: Iterable[int] = ()) -> None:
        """Makes `versions` the loaded set, atomically for every request. Versions that are no
        longer in it are retired: closed once their last request in flight has finished."""
        old = self.versions
        check_traffic(self.name, versions, weights or {}, shadow)
        self.versions = dict(versions)
        self._set_traffic(weights or {}, shadow)
        for version, model in old.items():
            if self.versions.get(version) is not model:
                self._retire(model)

    def set_traffic(self, weights: dict[int, float] | None = None, shadow: Iterable[int] | None = None) -> None:
        check_traffic(self.name, self.versions, weights or {}, shadow or ())
        self._set_traffic(self._weights if weights is None else weights,
                          [m.version for m in self._shadows] if shadow is None else shadow)

    def promote(self, version: int) -> None:
        """All traffic to `version`, which becomes the stable one."""
        self.set_traffic({version: 1.0}, [v for v in self.shadow_versions() if v != version])
        self.stable = version

    def rollback(self) -> None:
        """All traffic back to the stable version."""
        self.set_traffic({self.stable: 1.0}, self.shadow_versions())

    def unload(self) -> None:
        # Routes first, as install does: no request may be routed to a version once it retires.
        retiring = list(self.versions.values())
        self.versions = {}
        self._cumulative, self._weights, self._shadows = [], {}, ()
        self._changed()
        for model in retiring:
            self._retire(model)

    def shadow_versions(self) -> list[int]:
        return [m.version for m in self._shadows]

    def state(self) -> TrafficState:
        return TrafficState(sorted(self.versions), dict(self._weights), self.shadow_versions(), self.stable)

    def _set_traffic(self, weights: dict[int, float], shadow: Iterable[int]) -> None:
        weights = {v: w for v, w in weights.items() if w > 0 and v in self.versions}
        if not weights and self.versions:
            weights = {max(self.versions): 1.0}  # by default the newest version answers
        if weights:  # as shares of the largest first: a sum of weights near the float maximum overflows
            largest = max(weights.values())
            weights = {v: w / largest for v, w in weights.items()}
        total = sum(weights.values())
        bound, cumulative = 0.0, []
        for version in sorted(weights):
            bound += weights[version] / total
            cumulative.append((bound, self.versions[version]))
        if cumulative:
            cumulative[-1] = (1.0, cumulative[-1][1])
        shadows = tuple(self.versions[v] for v in dict.fromkeys(shadow) if v in self.versions and v not in weights)
        self._cumulative, self._weights, self._shadows = cumulative, {v: w / total for v, w in weights.items()}, shadows
        if len(weights) == 1 or self.stable not in self.versions:
            # The version rollback returns to: the one answering alone, else the largest share.
            self.stable = max(sorted(weights), key=lambda v: weights[v]) if weights else 0
        log.info("traffic", extra={"model": self.name, "weights": self._weights, "shadow": self.shadow_versions()})
        self._changed()

    def answering(self) -> list[tuple[float, Model]]:
        """The versions that answer, each with the upper bound of its share of [0, 1)."""
        return list(self._cumulative)

    def shadow_models(self) -> tuple[Model, ...]:
        return self._shadows

    def _changed(self) -> None:
        for listener in self._on_change:
            listener(self)

    def _retire(self, model: Model) -> None:
        if self._inflight.get(model):
            self._retired.add(model)
        else:
            self._close(model)

    def _close(self, model: Model) -> None:
        self._retired.discard(model)
        log.info("version unloaded", extra={"model": self.name, "version": model.version})
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop running (tests, shutdown): close here
            self._retire_version(model)
            return
        # A thread of its own, not the loop's default pool: a version with much queued work (or
        # one that hangs) must not hold up loads, which prepare there. Not a daemon: the process
        # lets retiring versions finish what they had queued before it exits.
        threading.Thread(target=self._retire_version, args=(model,), name=f"loopserve-retire-{self.name}").start()
