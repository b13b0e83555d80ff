"""The per-version services of a repository: each version's drift monitor and feedback record.

They attach through the repository's load hooks (called with each version once it is built and
warmed up, before it serves) and detach through its unload hooks (called as a version retires,
once its last request in flight has finished), as MLServer's `MultiModelRegistry(on_model_load=
[...], on_model_unload=[...])` does. `Model.load` (the in-process API) attaches drift through
the same `attach_drift`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from loopserve.monitor.feedback import FeedbackStore
from loopserve.monitor.monitor import DriftMonitor
from loopserve.monitor.profile import ReferenceProfile

# hook(model, its version directory, or None for a version built in Python)
LoadHook = Callable[[object, "Path | None"], None]
UnloadHook = Callable[[object], None]


def attach_drift(model, version_dir: str | Path | None) -> DriftMonitor | None:
    """Starts drift monitoring of a model version when its directory holds a reference profile
    (and its config does not turn monitoring off). Returns the monitor, also set as model.drift."""
    config = model.config.drift
    if version_dir is None or model.drift is not None:
        return model.drift
    path = Path(version_dir) / config.profile
    if not config.enabled or not path.is_file():
        return None
    model.drift = DriftMonitor.for_model(model, ReferenceProfile.load(path), config)
    return model.drift


def detach_drift(model) -> None:
    """Stops the version's drift monitor (blocking: its thread finishes the batches it holds)."""
    monitor, model.drift = model.drift, None
    if monitor is not None:
        model.attach_observer(None)
        monitor.stop()


class VersionServices:
    """The services one repository attaches to its versions. The feedback store is thread-safe
    (see loopserve.monitor.feedback); the hooks run on whatever thread loads or retires a version."""

    def __init__(self, feedback: FeedbackStore | None = None):
        self.feedback = feedback or FeedbackStore()

    @property
    def load_hooks(self) -> list[LoadHook]:
        # Drift first: it is the one that can refuse a version (a profile that does not fit).
        return [attach_drift, self.attach_feedback]

    @property
    def unload_hooks(self) -> list[UnloadHook]:
        return [self.detach_feedback, detach_drift]

    def attach_feedback(self, model, version_dir: Path | None = None) -> None:
        """Starts the version's prediction record (so a model with no request yet answers
        feedback with "unknown", not 404)."""
        self.feedback.track(model)

    def detach_feedback(self, model) -> None:
        """The version stops recording; its record stays until its horizon, so labels for its
        earlier predictions still join."""
        self.feedback.untrack(model)
