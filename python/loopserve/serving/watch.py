"""Picks up changes to the model repository without a restart: a model whose files changed
(its config, a version added or removed, a model file replaced) is loaded again, and a new
model directory is loaded. Polling, not inotify: it works the same on every filesystem,
network and container mounts included."""

from __future__ import annotations

import asyncio
import logging

from loopserve.serving.model import fingerprint
from loopserve.serving.repository import ModelRepository

log = logging.getLogger("loopserve.watch")


class RepositoryWatcher:
    """Runs on the event loop; loads happen in a thread, installs on the loop."""

    def __init__(self, repository: ModelRepository, interval_s: float, load_new: bool):
        self.repository = repository
        self.interval_s = interval_s
        self.load_new = load_new
        registry_names = set(repository.registry.sources) if repository.registry else set()
        self.seen: dict[str, tuple] = {name: self._fingerprint(name) for name in repository.routers
                                       if name not in registry_names}

    def _fingerprint(self, name: str) -> tuple:
        if self.repository.root is None:
            return ()
        try:
            return fingerprint(self.repository.root / name)
        except OSError:
            return ()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check()

    async def check(self) -> None:
        await self.check_registry()
        for name in self.repository.names_on_disk():
            current = self._fingerprint(name)
            if self.seen.get(name) == current:
                continue
            known = name in self.seen
            self.seen[name] = current
            if not known and not self.load_new:
                continue
            log.info("repository changed", extra={"model": name})
            await self._reload(name)

    async def _reload(self, name: str) -> None:
        """Builds the model's versions in a thread, then swaps them in on the loop."""
        try:
            await self.repository.load_async(name)
        except Exception as e:  # recorded by prepare; what served serves on
            log.error("reload failed", extra={"model": name, "reason": str(e)})

    async def check_registry(self) -> None:
        """Registry-sourced models follow their aliases: a moved alias is a hot swap."""
        registry = self.repository.registry
        if registry is None:
            return
        for name in registry.sources:
            try:
                wanted = await asyncio.to_thread(registry.wanted, name)
            except Exception as e:
                log.error("registry lookup failed", extra={"model": name, "reason": str(e)})
                continue
            router = self.repository.routers.get(name)
            if router is not None and set(router.versions) == set(wanted) and _same_weights(router, wanted):
                continue
            log.info("registry aliases moved", extra={"model": name, "versions": sorted(wanted)})
            await self._reload(name)


def _same_weights(router, wanted: dict[int, float | None]) -> bool:
    """Whether the router already splits traffic as `wanted` (main and canary may trade places)."""
    if all(w is None for w in wanted.values()):
        return len(router.state().weights) <= 1
    total = sum(w for w in wanted.values() if w)
    served = router.state().weights
    return all(abs(served.get(v, 0.0) - (w or 0.0) / total) < 1e-9 for v, w in wanted.items())
