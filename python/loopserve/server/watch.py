"""Picks up changes to the model repository without a restart: a model whose files changed
(its config, a version added or removed, a model file replaced) is loaded again, and a new
model directory is loaded. Polling, not inotify: it works the same on every filesystem,
network and container mounts included."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from loopserve.server.repository import ModelRepository

log = logging.getLogger("loopserve.watch")


def fingerprint(model_dir: Path) -> tuple:
    """What changes when anything a load reads changes: names, sizes, mtimes, two levels deep."""
    entries = []
    for top in sorted(os.scandir(model_dir), key=lambda e: e.name):
        paths = [top]
        if top.is_dir():
            paths = sorted(os.scandir(top.path), key=lambda e: e.name)
            entries.append((top.name,))
        for e in paths:
            st = e.stat()
            entries.append((os.path.relpath(e.path, model_dir), st.st_size, st.st_mtime_ns))
    return tuple(entries)


class RepositoryWatcher:
    """Runs on the event loop; loads happen in a thread, installs on the loop."""

    def __init__(self, repository: ModelRepository, interval_s: float, load_new: bool):
        self.repository = repository
        self.interval_s = interval_s
        self.load_new = load_new
        self.seen: dict[str, tuple] = {name: self._fingerprint(name) for name in repository.routers}

    def _fingerprint(self, name: str) -> tuple:
        try:
            return fingerprint(self.repository.root / name)
        except OSError:
            return ()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check()

    async def check(self) -> None:
        for name in self.repository.names_on_disk():
            current = self._fingerprint(name)
            if self.seen.get(name) == current:
                continue
            known = name in self.seen
            self.seen[name] = current
            if not known and not self.load_new:
                continue
            log.info("repository changed", extra={"model": name})
            try:
                prepared = await asyncio.to_thread(self.repository.prepare, name)
            except Exception as e:  # recorded by prepare; what served serves on
                log.error("reload failed", extra={"model": name, "reason": str(e)})
                continue
            self.repository.install(prepared)
