"""The drift monitor of one served model version.

The native monitor (loopserve._core.DriftMonitor) is attached to the version's batcher: every
batch that runs is handed off, bounded, to its own thread, which accumulates it into the open
window. This module builds it from a reference profile and turns its windows into reports.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

import msgspec
import numpy as np

from loopserve import _core
from loopserve.config import DriftConfig, DriftPolicy
from loopserve.errors import ConfigError
from loopserve.monitor.profile import CategoricalProfile, NumericProfile, ReferenceProfile
from loopserve.monitor.report import DriftReport, MonitorCounters, WindowDrift
from loopserve.monitor.verdict import window_drift

QUANTILE_SAMPLE_TARGET = 8192  # rows per window the quantile sketches take, when automatic
CLOSED_DRIFTS_KEPT = 256  # statistics of closed windows kept, so a page polling recent windows pays once per window


def native_spec(features) -> tuple[list, list]:
    """The native accumulator's (numeric, categorical) column specs for profiled features."""
    numeric = [(f.column, list(f.edges)) for f in features if isinstance(f, NumericProfile)]
    categorical = []
    for f in features:
        if isinstance(f, CategoricalProfile):
            categorical.append((f.column, len(f.categories), f.lookup_table().tolist()))
    return numeric, categorical


class SketchPayload(msgspec.Struct):
    """The serialized accumulators of a monitor's windows (`GET .../drift/sketch`), so the
    windows of several replicas can be merged into one view."""

    model: str
    version: str
    windows: list[dict]  # {start, end, closed, inputs: bytes, outputs: bytes | None}


class DriftMonitor:
    """Thread-safe: the native monitor takes batches from any thread; reports may be made from
    any thread."""

    def __init__(self, profile: ReferenceProfile, config: DriftConfig = DriftConfig(), *,
                 input_index: int = 0, output_index: int | None = 0, model: str = "", version: str = "",
                 device: str | None = None):
        """`device`: where the monitored tensors live when they come from a model on a GPU ("cuda:0"):
        the accumulators then live there too, updated by the Triton kernels (monitor/device.py).
        None: the native C++ path (host arrays). "cpu" runs the kernel path on CPU tensors, which
        only the interpreter (TRITON_INTERPRET=1) can do: for tests."""
        self.profile = profile
        self.config = config
        self.model = model
        self.version = version
        numeric, categorical = native_spec(profile.features)
        outputs = None
        if profile.outputs and output_index is not None:
            out_numeric, out_categorical = native_spec(profile.outputs)
            if out_categorical:
                raise ConfigError("drift: categorical model outputs are not supported; profile outputs as numbers")
            outputs = out_numeric
        every = config.quantile_sample_every or max(1, math.ceil(config.window_rows / QUANTILE_SAMPLE_TARGET))
        self.native = _core.DriftMonitor(
            numeric, categorical, outputs, kll_every=every, window_rows=config.window_rows,
            window_seconds=config.window_seconds, history=config.history, queue_rows=config.queue_rows,
            input_index=input_index, output_index=output_index if output_index is not None else -1,
            extremes_k=config.extremes, exact_values=config.exact_values, exact_windows=config.exact_windows)
        self._latest: tuple[int, WindowDrift | None] = (-1, None)
        # A closed window never changes: its statistics (milliseconds per window) are made once.
        self._closed_drifts: OrderedDict[tuple, WindowDrift] = OrderedDict()
        self._closed_lock = threading.Lock()
        self.device_path = None
        if device is not None:
            from loopserve.monitor.device import DeviceDriftPath

            self.device_path = DeviceDriftPath(self.native, profile, config, kll_every=every, device=device,
                                               watch_outputs=outputs is not None, input_index=input_index,
                                               output_index=output_index if outputs is not None else None)

    @classmethod
    def for_model(cls, model, profile: ReferenceProfile, config: DriftConfig, *,
                  use_kernels: bool | None = None) -> "DriftMonitor":
        """A monitor for a loopserve Model's input (and output) tensors, checked against its
        declared shapes, and attached to its batcher, or, for a torch model on a CUDA device, to
        its backend's device tensors (the kernel path). `use_kernels` forces the choice (tests)."""
        input_index = _tensor_index(model.inputs, config.input, "input", model.name)
        _check_width(model, model.inputs[input_index], profile.features, "monitors column", "input")
        output_index = None
        if profile.outputs:
            output_index = _tensor_index(model.outputs, config.output, "output", model.name)
            _check_width(model, model.outputs[output_index], profile.outputs, "watches output column", "output")
        if use_kernels and not hasattr(model.backend, "drift_observer"):
            raise ConfigError(f"model '{model.name}': only torch models hand their tensors to the drift kernels")
        device = _kernel_device(model.backend) if use_kernels is None else (
            str(getattr(model.backend, "device", "cpu")) if use_kernels else None)
        monitor = cls(profile, config, input_index=input_index, output_index=output_index,
                      model=model.name, version=str(model.version), device=device)
        if monitor.device_path is not None:
            model.backend.drift_observer = monitor.device_path  # the backend hands over its device tensors
        else:
            model.attach_observer(monitor.native)
        return monitor

    def offer(self, inputs: np.ndarray, outputs: np.ndarray | None = None) -> None:
        """Hands rows to the monitor directly (for data that does not come through a batcher)."""
        if self.device_path is not None:
            import torch

            dev = self.device_path.device
            self.device_path.observe(torch.as_tensor(np.ascontiguousarray(inputs)).to(dev),
                                     None if outputs is None else torch.as_tensor(np.ascontiguousarray(outputs)).to(dev))
            return
        self.native.offer(np.ascontiguousarray(inputs), None if outputs is None else np.ascontiguousarray(outputs))

    def flush(self) -> None:
        (self.device_path or self.native).flush()

    def close_window(self) -> None:
        (self.device_path or self.native).close_window()

    def stop(self) -> None:
        if self.device_path is not None:
            self.device_path.stop()
        self.native.stop()

    def raw_windows(self, include_open: bool = True, last: int = 0) -> list[dict]:
        """The native windows ({start, end, closed, inputs, outputs}, accumulators live), oldest first,
        the `last` ones only when > 0; on the kernel path the open one is read back from the device."""
        if self.device_path is None:
            return self.native.windows(include_open, last)
        windows = self.native.windows(False, last) + ([self.device_path.open_window()] if include_open else [])
        return windows[-last:] if last > 0 else windows

    def stats(self) -> dict:
        return self.device_path.stats() if self.device_path is not None else self.native.stats()

    def windows(self, policy: DriftPolicy | None = None, include_open: bool = True) -> list[WindowDrift]:
        policy = policy or self.config.policy
        return [window_drift(w, self.profile, policy) for w in self.raw_windows(include_open)]

    def latest_closed(self) -> WindowDrift | None:
        """The most recent closed window's drift, computed once per window (for scrapes)."""
        closed_so_far = self.native.stats()["windows_closed"]
        if self._latest[0] != closed_so_far:
            windows = self.native.windows(False, 1)
            self._latest = (closed_so_far, self._drift(windows[-1]) if windows else None)
        return self._latest[1]

    def _drift(self, window: dict) -> WindowDrift:
        if not window["closed"]:
            return window_drift(window, self.profile, self.config.policy)
        key = (window["start"], window["end"], window["inputs"].rows)
        with self._closed_lock:
            drift = self._closed_drifts.get(key)
            if drift is not None:
                self._closed_drifts.move_to_end(key)
        if drift is None:
            drift = window_drift(window, self.profile, self.config.policy)
            with self._closed_lock:
                self._closed_drifts[key] = drift
                while len(self._closed_drifts) > CLOSED_DRIFTS_KEPT:
                    self._closed_drifts.popitem(last=False)
        return drift

    def report(self, include_open: bool = True, last: int | None = None) -> DriftReport:
        windows = self.raw_windows(include_open, last or 0)
        drifts = [self._drift(w) for w in windows]
        latest = self.latest_closed()  # whatever the slice: the alert is the latest closed window's
        return DriftReport(model=self.model, version=self.version, reference_rows=self.profile.rows,
                           alert=latest is not None and latest.verdict == "drift",
                           monitor=MonitorCounters(**self.stats()), windows=drifts)

    def sketch(self) -> SketchPayload:
        windows = []
        for w in self.raw_windows(True):
            windows.append({"start": w["start"], "end": w["end"], "closed": w["closed"],
                            "inputs": w["inputs"].serialize(),
                            "outputs": w["outputs"].serialize() if w["outputs"] is not None else None})
        return SketchPayload(model=self.model, version=self.version, windows=windows)


def merge_windows(windows: list[dict]) -> dict:
    """One window from several (say, the latest window of each replica): accumulators merged,
    the span from the earliest start to the latest end. Accepts the dicts of
    SketchPayload.windows (serialized) or of the native monitor (live accumulators)."""
    if not windows:
        raise ValueError("no windows to merge")

    def live(acc):
        return _core.TensorAccumulator.deserialize(acc) if isinstance(acc, (bytes, bytearray)) else acc

    inputs = _core.TensorAccumulator.deserialize(live(windows[0]["inputs"]).serialize())
    outputs = windows[0].get("outputs")
    outputs = _core.TensorAccumulator.deserialize(live(outputs).serialize()) if outputs is not None else None
    for w in windows[1:]:
        inputs.merge(live(w["inputs"]))
        if outputs is not None and w.get("outputs") is not None:
            outputs.merge(live(w["outputs"]))
    return {"start": min(w["start"] for w in windows), "end": max(w["end"] for w in windows),
            "closed": all(w["closed"] for w in windows), "inputs": inputs, "outputs": outputs}


def _kernel_device(backend) -> str | None:
    """The CUDA device of a torch model whose drift the kernels can follow there, else None."""
    device = getattr(backend, "device", None)
    if getattr(device, "type", None) != "cuda" or not hasattr(backend, "drift_observer"):
        return None
    from loopserve import kernels

    return str(device) if kernels.available() else None


def _tensor_index(tensors, name: str | None, kind: str, model: str) -> int:
    if not tensors:
        raise ConfigError(f"model '{model}': drift monitoring needs an {kind} tensor")
    if name is None:
        return 0
    for i, t in enumerate(tensors):
        if t.name == name:
            return i
    raise ConfigError(f"model '{model}': drift.{kind} names '{name}', but the model's {kind}s are "
                      f"{[t.name for t in tensors]}")


def _check_width(model, tensor, profiled, what: str, kind: str) -> None:
    """The tensor has every column the profile reads (when its width is fixed)."""
    width = _row_width(tensor, model.config.max_batch_size)
    needed = max(f.column for f in profiled) + 1
    if width is not None and width < needed:
        raise ConfigError(f"model '{model.name}': drift profile {what} {needed - 1} but {kind} "
                          f"'{tensor.name}' has {width} values per row")


def _row_width(tensor, max_batch_size: int) -> int | None:
    dims = list(tensor.dims) if max_batch_size > 0 else list(tensor.dims)[1:]
    if any(d < 0 for d in dims):
        return None
    return int(np.prod(dims)) if dims else 1
