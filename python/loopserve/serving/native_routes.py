"""The engine's routing state, kept in the native core for requests that enter natively.

With `workers: N` (N > 1) infer requests reach the engine through the front ends' shared-memory
channels and are routed and submitted by the native ingress (csrc/serving/ingress.*), with no
Python per request. This module keeps that native routing table in step with the Python
VersionRouters, which stay the place where every decision is made (loads, hot swaps, traffic
weights, promotion, rollback): after each change, the model's new state is published whole.

Two duties follow from routing natively:
- a version must not stop while the ingress may still submit to it: before it stops, the
  retirement waits until no thread holds a routing table that still names it
  (`Router.wait_quiescent`);
- feedback: the ingress records each answered prediction (with a 128-bit random id when the
  request sent none) into a native tap per version; a thread here hands them to the feedback
  record (loopserve.monitor.feedback) in batches. A retiring version's tap is drained from the
  moment its batcher has run what it had queued and stopped, for RETIRING_DRAIN_S more.

Thread-safety: `publish` runs on the event loop's thread (where routers change); the retirement
hooks on the thread that retires a version; the feedback thread on its own.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref

import msgspec

from loopserve import _core
from loopserve.serving.model import Model
from loopserve.serving.repository import ModelRepository
from loopserve.serving.router import VersionRouter

log = logging.getLogger("loopserve.engine")

FEEDBACK_DRAIN_S = 0.02
# How long a stopped version's tap is still drained: the native HTTP server records an answer on
# its own loop's thread (csrc/http hands completions there), moments after the batcher ran it.
RETIRING_DRAIN_S = 10.0


class NativeRoutes:
    def __init__(self, repository: ModelRepository, spin_us: int = 0):
        self.repository = repository
        self.router = _core.Router()
        self.ingress = _core.Ingress(self.router, spin_us)
        self._taps: "weakref.WeakKeyDictionary[Model, tuple]" = weakref.WeakKeyDictionary()
        self._retiring: list[tuple[tuple, float]] = []  # (entry, drained until), under _taps_lock
        self._taps_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._feedback_thread = threading.Thread(target=self._drain_feedback, name="loopserve-feedback-tap",
                                                 daemon=True)
        repository.on_route_change.append(self.publish)
        repository.services.feedback.catch_up.append(self.flush_feedback)
        repository.before_version_stop.append(self._before_stop)
        repository.on_version_unload.insert(0, self._after_stop)
        for router in repository.routers.values():
            self.publish(router)
        self._feedback_thread.start()

    def publish(self, router: VersionRouter) -> None:
        current = self.repository.routers.get(router.name)
        if current is not None and current is not router:
            # A router the name no longer serves (unloaded, then loaded again as a new router):
            # a late change to it must not touch the live model's routes.
            return
        if not router.versions:
            self.router.remove_model(router.name)
            return
        loaded = [(version, model._batcher, self._tap(model)) for version, model in sorted(router.versions.items())]
        answering = [(bound, model.version) for bound, model in router.answering()]
        self.router.set_model(router.name, loaded, answering, [m.version for m in router.shadow_models()])

    def _before_stop(self, model: Model) -> None:
        """No request can reach the version's batcher once this returns (blocking, microseconds)."""
        self.router.wait_quiescent()

    def _after_stop(self, model: Model) -> None:
        """Hands what the stopped version answered to the feedback record now (before the unload
        hooks untrack it), then drains its tap a while longer for answers still being written."""
        with self._taps_lock:
            entry = self._taps.pop(model, None)
            if entry is not None:
                self._retiring.append((entry, time.monotonic() + RETIRING_DRAIN_S))
        self.flush_feedback()

    def _tap(self, model: Model):
        with self._taps_lock:
            entry = self._taps.get(model)
            if entry is not None:
                return entry[0]
        track = self.repository.services.feedback.track(model)
        if track is None:
            return None
        outputs = [t.name for t in model.outputs]
        inputs = [t.name for t in model.inputs]
        x_names = [name for name, _offset, _width in track.layout.x_layout]
        # Between two drains (20 ms) a tap holds at most 65,536 requests and 64 MiB of tensors.
        tap = _core.FeedbackTap(outputs.index(track.output), [inputs.index(n) for n in x_names])
        with self._taps_lock:
            self._taps[model] = (tap, track, x_names)
        return tap

    def _drain_feedback(self) -> None:
        while not self._stop.wait(FEEDBACK_DRAIN_S):
            try:
                self.flush_feedback()
            except Exception:  # the thread must outlive any one batch: the taps fill up otherwise
                log.exception("feedback drain failed")

    def flush_feedback(self) -> None:
        """Hands every prediction the taps hold to the feedback record. Any thread; one flush
        at a time, so that a flush that finds a tap empty knows its entries are recorded."""
        with self._flush_lock:
            with self._taps_lock:
                now = time.monotonic()
                entries = list(self._taps.values()) + [entry for entry, _ in self._retiring]
                self._retiring = [(entry, until) for entry, until in self._retiring if until > now]
            for entry in entries:
                self._record(*entry)

    @staticmethod
    def _record(tap, track, x_names) -> None:
        for ids, groups, times, y, y_rows, xs, x_rows in tap.drain_blocks():
            track.record_block(ids, [_group(g) for g in groups], times.tolist(), y, y_rows,
                               dict(zip(x_names, xs)), dict(zip(x_names, x_rows)))
        track.count_dropped(tap.take_dropped())

    def close(self) -> None:
        """Stops the ingress (after the front ends are gone) and hands over what the taps hold."""
        self.ingress.stop()
        self._stop.set()
        self._feedback_thread.join()
        self.flush_feedback()


def _group(text: str):
    """A request's `group` parameter from its JSON text (None when it had none); the text itself
    when it does not decode here (numbers past float64, deep nesting), so one odd group costs
    that request its group, not the drain."""
    if not text:
        return None
    try:
        return msgspec.json.decode(text)
    except (msgspec.DecodeError, RecursionError):
        return text
