"""A served model version: its backend behind the native dynamic batcher.

    model = Model.load("models/mlp")          # <dir>/config.yaml + <dir>/<version>/model.*
    outputs = await model.infer({"INPUT0": x})  # from any asyncio loop
    outputs = model.infer_sync({"INPUT0": x})   # from any thread
    model.stats()

Completions reach each event loop through one native completion queue per loop, whose
eventfd the loop watches: one wake-up per batch, never one per request.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import os
import re
import weakref
from pathlib import Path
from typing import Any, Callable, Mapping

import msgspec
import numpy as np

from loopserve import _core
from loopserve.backends import MODEL_FILES, Backend, find_model_file, open_backend
from loopserve.config import ModelConfig, load_config
from loopserve.errors import ConfigError, ModelError, ModelNotFound, TimedOut, Unavailable

CONFIG_NAMES = ("config.yaml", "config.yml", "config.toml", "config.json")


class BatchSizeStats(msgspec.Struct, frozen=True):
    count: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int


class ModelStats(msgspec.Struct, frozen=True):
    """Counters since the version loaded. Times are summed over requests (a request is
    charged its whole batch's compute time), as Triton's statistics extension counts."""

    name: str
    version: int
    success: int
    failed: int
    timed_out: int
    rejected: int
    inference_count: int  # rows run
    execution_count: int  # batches run
    queued: int
    last_inference_ms: int  # wall clock of the last batch, ms since the Unix epoch; 0 if none
    queue_ns: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int
    success_ns: int
    failed_ns: int
    inline_runs: int  # requests run on the caller's thread (lone, quick, nothing to wait for)
    delayed_batches: int  # batches that waited out max_queue_delay_us for more requests
    batch_sizes: dict[int, BatchSizeStats]

    @property
    def batch_size_histogram(self) -> dict[int, int]:
        return {size: s.count for size, s in sorted(self.batch_sizes.items())}


class _LoopChannel:
    """The completions bound for one event loop: a native CompletionQueue whose eventfd the
    loop watches, and the futures waiting on it by token."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.queue = _core.CompletionQueue()
        self.pending: dict[int, tuple[asyncio.Future, Any, tuple[str, ...]]] = {}
        self.tokens = itertools.count(1)
        self.wakeups = 0  # times the loop woke for completions (at most one per batch)
        self._deferred: set = set()  # batchers with requests this loop will run itself
        # No reference to the loop is kept: _channels holds channels weakly by loop.
        loop.add_reader(self.queue.fd, self._on_readable)

    def run_soon(self, loop: asyncio.AbstractEventLoop, batcher) -> None:
        """Runs the batcher's deferred requests on this loop once the current callbacks are
        done, so that the requests this loop submits in the meantime join the same batch."""
        if batcher not in self._deferred:
            self._deferred.add(batcher)
            loop.call_soon(self._run_deferred, batcher)

    def _run_deferred(self, batcher) -> None:
        self._deferred.discard(batcher)
        batcher.run_deferred(self.queue)
        self.drain()

    def _on_readable(self) -> None:
        self.wakeups += 1
        self.drain()

    def drain(self) -> None:
        pending = self.pending
        for token, status, payload in self.queue.drain():
            future, _inputs, names = pending.pop(token)
            if future.done():  # the caller gave up (cancelled); the result is dropped
                continue
            if status == _core.STATUS_OK:
                future.set_result(dict(zip(names, payload)))
            else:
                future.set_exception(_error(status, payload))
        if not pending:
            _busy_channels.discard(self)


_channels: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopChannel]" = weakref.WeakKeyDictionary()
# Channels with requests in flight, held strongly: the batcher reads a request's arrays in
# place until it completes, so they must outlive even a loop that closed without waiting.
_busy_channels: set[_LoopChannel] = set()


def _channel(loop: asyncio.AbstractEventLoop) -> _LoopChannel:
    channel = _channels.get(loop)
    if channel is None:
        channel = _channels[loop] = _LoopChannel(loop)
    return channel


def _error(status: int, message: str) -> Exception:
    if status == _core.STATUS_TIMED_OUT:
        return TimedOut(message)
    if status == _core.STATUS_MODEL_ERROR:
        return ModelError(message)
    return Unavailable(message)


def _as_arrays(inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for name, value in inputs.items():
        if type(value) is not np.ndarray:
            value = np.ascontiguousarray(value)
        else:
            flags = value.flags
            if not (flags.c_contiguous and flags.aligned):  # binary bodies may leave a tensor unaligned
                value = np.ascontiguousarray(value) if flags.aligned else value.copy()
        out[name] = value
    return out


class Model:
    """One version of a model, served through its own native batcher. Thread-safe."""

    def __init__(self, config: ModelConfig, backend: Backend, version: int = 1):
        self.config = config
        self.name = config.name
        self.version = version
        self.backend = backend
        self.inputs = backend.inputs
        self.outputs = backend.outputs
        self._output_names = tuple(t.name for t in backend.outputs)
        self.input_datatypes = {t.name: t.datatype for t in backend.inputs}
        batching = config.dynamic_batching
        bc = _core.BatcherConfig()
        bc.model_name = config.name
        bc.inputs = [_core.TensorSpec(t.name, t.datatype, list(t.dims)) for t in backend.inputs]
        bc.outputs = [_core.TensorSpec(t.name, t.datatype, list(t.dims)) for t in backend.outputs]
        bc.max_batch_size = config.max_batch_size
        bc.preferred_batch_sizes = list(batching.preferred_batch_sizes)
        bc.max_queue_delay_us = batching.max_queue_delay_us
        bc.adaptive_queue_delay = batching.adaptive_queue_delay
        bc.queue_capacity = batching.queue_capacity
        bc.max_queue_wait_us = batching.max_queue_wait_us
        bc.default_timeout_us = batching.default_timeout_us
        bc.priority_levels = batching.priority_levels
        bc.default_priority_level = batching.default_priority_level
        bc.instances = config.instances
        bc.inline_budget_us = batching.inline_budget_us
        self.drift = None  # a loopserve.monitor.DriftMonitor, when the version has a reference profile
        executor = _core.PyExecutor(backend, bc.inputs, bc.outputs, backend.staging(),
                                    pass_instance=backend.takes_instance)
        try:
            self._batcher = _core.Batcher(bc, executor)
        except ValueError as e:  # the core's own check of the batching settings
            raise ConfigError(str(e)) from None

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def load(cls, model_dir: str | Path, version: int | None = None, *, name: str | None = None) -> "Model":
        """Loads `<model_dir>/<version>/model.*` with `<model_dir>/config.yaml` (or .toml,
        .json); the highest numbered version when none is named. A directory holding the config
        and the model file side by side (one version, as the registry materializes it) loads too."""
        model_dir = Path(model_dir)
        config_file = next((model_dir / n for n in CONFIG_NAMES if (model_dir / n).is_file()), None)
        if config_file is None:
            raise ConfigError(f"{model_dir}: no config file; expected one of {', '.join(CONFIG_NAMES)}")
        config = load_config(config_file)
        config = msgspec.structs.replace(config, name=name or config.name or model_dir.name)
        versions = available_versions(model_dir)
        if not versions and any((model_dir / f).is_file() for f in MODEL_FILES):
            # A single version's directory (as the registry materializes one): config and model side by side.
            version_dir, version = model_dir, version or 1
        else:
            if version is None:
                if not versions:
                    raise ModelNotFound(f"{model_dir}: no version directories (1/, 2/, ...)")
                version = versions[-1]
            elif version not in versions:
                raise ModelNotFound(f"{model_dir}: model '{config.name}' has no version {version} "
                                    f"(available: {versions})")
            version_dir = model_dir / str(version)
        backend = open_backend(config, find_model_file(version_dir))
        model = cls(config, backend, version)
        try:
            from loopserve.serving.services import attach_drift  # the repository's drift load hook

            attach_drift(model, version_dir)
        except BaseException:
            model.close()
            raise
        return model

    @classmethod
    def from_module(cls, module, config: ModelConfig, version: int = 1) -> "Model":
        """Serves a torch nn.Module (or any torch callable) handed in from Python."""
        from loopserve.backends.torch_backend import TorchBackend

        return cls(config, TorchBackend(config, module, f"model '{config.name}'"), version)

    @classmethod
    def from_callable(cls, fn: Callable, config: ModelConfig, version: int = 1) -> "Model":
        """Serves a Python callable: {name: array} -> {name: array}, called once per batch."""
        from loopserve.backends.python_backend import PythonBackend

        return cls(config, PythonBackend(config, fn, f"model '{config.name}'"), version)

    # -- inference ------------------------------------------------------------------------

    def infer(self, inputs: Mapping[str, Any], *, priority: int = 0, timeout_us: int = -1) -> asyncio.Future:
        """Queues one request (a dict of input name to array, batch dimension first) and
        returns an awaitable of {output name: array}.

        Raises at once InvalidInput (unknown input, wrong datatype or shape), QueueFull or
        Unavailable; the awaitable raises TimedOut or ModelError. priority: 1 is served
        first, 0 means the config's default; timeout_us: -1 the default, 0 none.
        """
        loop = asyncio.get_running_loop()
        channel = _channel(loop)
        arrays = _as_arrays(inputs)
        token = next(channel.tokens)
        submitted = self._batcher.submit(arrays, token, channel.queue, priority, timeout_us, True)
        future = loop.create_future()
        # The arrays stay referenced until the completion: the batcher reads them in place.
        if not channel.pending:
            _busy_channels.add(channel)
        channel.pending[token] = (future, arrays, self._output_names)
        if submitted == _core.SUBMIT_DEFERRED:
            channel.run_soon(loop, self._batcher)
        elif submitted == _core.SUBMIT_RAN:  # it already ran, on this thread: answer now
            channel.drain()
        return future

    def infer_sync(self, inputs: Mapping[str, Any], *, priority: int = 0, timeout_us: int = -1) -> dict[str, np.ndarray]:
        """Blocking infer, from any thread (the GIL is released while waiting)."""
        _token, status, payload = self._batcher.infer_sync(_as_arrays(inputs), priority, timeout_us)
        if status != _core.STATUS_OK:
            raise _error(status, payload)
        return dict(zip(self._output_names, payload))

    # -- state ----------------------------------------------------------------------------

    def attach_observer(self, observer) -> None:
        """Shows every batch this model runs to a native observer (a drift monitor), or to none."""
        self._batcher.set_observer(observer)

    def stats(self) -> ModelStats:
        s = self._batcher.stats()
        sizes = {int(k): BatchSizeStats(**v) for k, v in s.pop("by_batch_size").items()}
        return ModelStats(name=self.name, version=self.version, batch_sizes=sizes, **s)

    def stop(self) -> None:
        """Refuses new requests, runs everything queued and stops the worker threads (blocking;
        the model stays loaded until `close`)."""
        self._batcher.stop()

    def close(self) -> None:
        """`stop`, then lets go of the model, returning its memory to the system."""
        self.stop()
        if self.drift is not None:  # still attached (Model.load); a repository detaches it on unload
            from loopserve.serving.services import detach_drift

            detach_drift(self)
        if self.backend is None:
            return
        self._batcher.release_executor()
        self.backend = None
        _return_freed_memory()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _return_freed_memory() -> None:
    """glibc keeps freed memory in its arenas (one per thread that allocated) for reuse; a
    model's tens of MiB would then stay resident after it unloads. malloc_trim gives them
    back. Elsewhere (musl, macOS) there is nothing to do."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def available_versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and re.fullmatch(r"[1-9]\d*", p.name))


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
