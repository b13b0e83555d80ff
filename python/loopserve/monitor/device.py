"""The drift monitor's GPU path: a version whose model runs on a CUDA device has each batch's
monitored tensors updated into device-resident accumulators by the Triton kernels
(`loopserve.kernels`), so no row crosses to the host.

The backend hands over its device tensors after the model ran (`observe`); a worker thread
launches the kernels on a side stream that waits on the batch's compute (an event), so serving
never waits for the monitor. The windows are the native monitor's (same row and time rules:
a batch that crosses `window_rows` is split exactly); closing one reads back the accumulators
(kilobytes), the window's values while it keeps them all (`drift.exact_values`: 4 bytes a value
for FP32, read once a window) and the quantile sketches' sampled rows (drawn as the native
accumulator draws them: `TensorAccumulator.sample_rows`), builds a `_core.TensorAccumulator` from them
(`absorb`) and hands it to the native monitor (`push_closed`), so reports, the sketch payload
and merging are the same on both paths. Counts equal the native path's bit for bit, and so do
the kept values and, while a window keeps them or with exact_values 0, the quantile sketches (same
rows, same order); past exact_values both sketches hold a Bernoulli(1 / kll_every) sample of the
whole window, drawn apart (the native path draws again over the values it lets go). Moments agree
to rounding.

Without a GPU the same path runs on CPU tensors under TRITON_INTERPRET=1 (tests force it).
"""

from __future__ import annotations

import collections
import threading
import time

import numpy as np
import torch

from loopserve import _core
from loopserve.monitor.profile import CategoricalProfile, NumericProfile


class _TensorState:
    """Device accumulators of one monitored tensor for the open window."""

    def __init__(self, features, kll_every: int, device: torch.device, extremes_k: int, exact_values: int):
        numeric = [f for f in features if isinstance(f, NumericProfile)]
        categorical = [f for f in features if isinstance(f, CategoricalProfile)]
        self.spec = ([(f.column, list(f.edges)) for f in numeric],
                     [(f.column, len(f.categories), f.lookup_table().tolist()) for f in categorical])
        self.kll_every = kll_every
        self.extremes_k = extremes_k
        self.exact_values = exact_values
        self.device = device
        F, C = len(numeric), len(categorical)
        e_max = max((len(f.edges) for f in numeric), default=0)
        self.cols = torch.tensor([f.column for f in numeric], dtype=torch.int32, device=device)
        self.cols_long = self.cols.long()  # for the quantile sketches' sampled rows
        edges = torch.full((F, e_max), float("inf"), dtype=torch.float64)
        for i, f in enumerate(numeric):
            edges[i, :len(f.edges)] = torch.tensor(f.edges, dtype=torch.float64)
        from loopserve.kernels import drift

        self.edges = edges.to(device)
        self.edges_f32 = drift._edges_f32(self.edges)
        self.n_edges = torch.tensor([len(f.edges) for f in numeric], dtype=torch.int32, device=device)
        self.counts = torch.zeros((F, e_max + 1), dtype=torch.int64, device=device)
        self.sums = torch.zeros((F, e_max + 1), dtype=torch.float64, device=device)
        self.missing = torch.zeros(F, dtype=torch.int64, device=device)
        self.cat = None
        if C:
            luts = [f.lookup_table() for f in categorical]
            width = max(1, max(len(t) for t in luts))
            table = torch.zeros((C, width), dtype=torch.int32)
            for i, t in enumerate(luts):
                table[i, :len(t)] = torch.as_tensor(t, dtype=torch.int32)
            k_max = max(len(f.categories) for f in categorical)
            self.cat = dict(cat_cols=torch.tensor([f.column for f in categorical], dtype=torch.int32, device=device),
                            luts=table.to(device),
                            lut_sizes=torch.tensor([len(t) for t in luts], dtype=torch.int32, device=device),
                            n_other=torch.tensor([len(f.categories) for f in categorical], dtype=torch.int32,
                                                 device=device),
                            cat_counts=torch.zeros((C, k_max + 1), dtype=torch.int64, device=device),
                            cat_missing=torch.zeros(C, dtype=torch.int64, device=device))
        self.min_columns = max([c for c, _ in self.spec[0]] + [c for c, _, _ in self.spec[1]], default=-1) + 1
        self.reset()

    def reset(self) -> None:
        self.counts.zero_()
        self.sums.zero_()
        self.missing.zero_()
        if self.cat:
            self.cat["cat_counts"].zero_()
            self.cat["cat_missing"].zero_()
        F = self.cols.shape[0]
        # Running moments of the window: n, and the mean, m2, min, max planes the kernels merge into.
        self.moment_n = torch.zeros(F, dtype=torch.int64, device=self.device)
        self.moment_planes = torch.zeros((4, F), dtype=torch.float64, device=self.device)
        self.moment_planes[2].fill_(float("inf"))
        self.moment_planes[3].fill_(float("-inf"))
        self.samples: list[torch.Tensor] = []
        # Each feature's k largest and k smallest values so far (the native Extremes), kept on the
        # device: [F, <= k] each, -inf / +inf where fewer values were seen (torch.topk, exact).
        self.top = self.bottom = None
        # Every row's numeric features while the window keeps them (drift.exact_values), on the
        # device until the window closes; None once it has outgrown them.
        self.values: list[torch.Tensor] | None = [] if self.exact_values > 0 else None
        self.rows = 0
        # Draws the quantile sketches' row sample exactly as the native accumulator of a new window does.
        self.sampler = _core.TensorAccumulator(*self.spec, kll_every=self.kll_every, extremes_k=self.extremes_k)

    def update(self, x: torch.Tensor) -> None:
        """Adds a [rows, cols] device tensor (already checked)."""
        from loopserve import kernels

        F = self.cols.shape[0]
        rows = x.shape[0]
        kw = dict(check=False)
        if self.cat:
            kw.update(self.cat)
        if F:
            kw.update(numeric_cols=self.cols, edges=self.edges, n_edges=self.n_edges, counts=self.counts,
                      missing=self.missing, sums=self.sums, with_moments=True,
                      moments_into=(self.moment_n, self.moment_planes),
                      edges_f32=self.edges_f32 if x.dtype == torch.float32 else None)
            kernels.drift_update_(x, **kw)
            self._update_extremes(x)
            self._keep_values(x)
            picked = self.sampler.sample_rows(rows)
            if picked.size:
                idx = torch.from_numpy(picked).to(self.device, non_blocking=True)
                self.samples.append(x[idx][:, self.cols_long].to(torch.float64))
        elif self.cat:
            kernels.drift_update_(x, **kw)
        self.rows += rows

    def _keep_values(self, x: torch.Tensor) -> None:
        if self.values is None:
            return
        if self.rows + x.shape[0] > self.exact_values:
            self.values = None  # the samples, gathered all along, stand for the window now
            return
        kept = x[:, self.cols_long]
        # In the type the native accumulator keeps them in: float for FP32, double otherwise.
        self.values.append(kept if kept.dtype == torch.float32 else kept.to(torch.float64))

    def _update_extremes(self, x: torch.Tensor) -> None:
        v = x[:, self.cols_long].to(torch.float64).T  # [F, rows]
        finite = torch.isfinite(v)
        inf = torch.tensor(float("inf"), dtype=torch.float64, device=v.device)
        top = torch.where(finite, v, -inf)
        bottom = torch.where(finite, v, inf)
        if self.top is not None:
            top, bottom = torch.cat([self.top, top], dim=1), torch.cat([self.bottom, bottom], dim=1)
        k = min(self.extremes_k, top.shape[1])
        self.top = torch.topk(top, k, dim=1).values
        self.bottom = torch.topk(bottom, k, dim=1, largest=False).values

    def accumulator(self) -> "_core.TensorAccumulator":
        """The window so far as a native accumulator: reads back kilobytes (and the sampled rows)."""
        acc = _core.TensorAccumulator(*self.spec, kll_every=self.kll_every, extremes_k=self.extremes_k,
                                      exact_values=self.exact_values)
        F = self.cols.shape[0]
        samples = torch.cat(self.samples) if self.samples else torch.zeros((0, F), dtype=torch.float64)
        n = self.moment_n.cpu().numpy()
        mean, m2, lo, hi = self.moment_planes.cpu().numpy()
        C = len(self.spec[1])
        cat_counts = self.cat["cat_counts"].cpu().numpy() if self.cat else np.zeros((0, 1), dtype=np.int64)
        cat_missing = self.cat["cat_missing"].cpu().numpy() if self.cat else np.zeros(C, dtype=np.int64)
        extremes = {}
        if self.top is not None:  # not finite (the padding) reads as NaN, which absorb passes over
            extremes = {side: np.nan_to_num(t.cpu().numpy(), nan=np.nan, posinf=np.nan, neginf=np.nan)
                        for side, t in (("top", self.top), ("bottom", self.bottom))}
        acc.absorb(self.rows, self.counts.cpu().numpy(), self.sums.cpu().numpy(), self.missing.cpu().numpy(), n, mean,
                   m2, lo, hi,
                   samples.cpu().numpy(), cat_counts, cat_missing, **extremes, values=self._values_on_host())
        return acc

    def _values_on_host(self) -> np.ndarray | None:
        if not self.values or len({v.dtype for v in self.values}) != 1:
            return None  # none kept, or FP32 and FP64 batches mixed: the sample stands for them
        return np.ascontiguousarray(torch.cat(self.values).cpu().numpy())


class DeviceDriftPath:
    """Thread-safe: observe() from any thread (the model's instances); the rest from any thread.
    One worker thread updates the accumulators."""

    def __init__(self, native, profile, config, *, kll_every: int, device, watch_outputs: bool,
                 input_index: int = 0, output_index: int | None = None):
        self.native = native
        self.input_index, self.output_index = input_index, output_index
        self.config = config
        self.device = torch.device(device)
        self.inputs = _TensorState(profile.features, kll_every, self.device, config.extremes, config.exact_values)
        self.outputs = _TensorState(profile.outputs, kll_every, self.device, config.extremes,
                                    config.exact_values) if watch_outputs else None
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._queue: collections.deque = collections.deque()
        self._queued_rows = 0
        self._busy = False
        self._stopping = False
        self._cv = threading.Condition()
        self._windows = threading.Lock()  # the open window's accumulators
        self._open_since = time.monotonic()
        self._open_start = time.time()
        self.rows_seen = self.rows_skipped = self.batches_skipped = self.rows_rejected = 0
        self._thread = threading.Thread(target=self._run, name="drift-gpu", daemon=True)
        self._thread.start()

    # -- hand-off (latency path) ----------------------------------------------------------------

    def observe_batch(self, inputs, outputs) -> None:
        """The backend's hook: the batch's device tensors in declared order, after the model ran."""
        y = outputs[self.output_index] if self.output_index is not None and self.output_index < len(outputs) else None
        self.observe(inputs[self.input_index], y if isinstance(y, torch.Tensor) else None)

    def observe(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Takes a batch's monitored input (and output) tensors where they are; returns at once."""
        rows = int(x.shape[0]) if x.dim() else 1
        if rows <= 0:
            return
        event = None
        if self.stream is not None:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
        else:  # CPU tensors (tests) may view the batcher's buffers, reused once the batch returns
            x = x.clone()
            y = y.clone() if y is not None else None
        with self._cv:
            if self._stopping or self._queued_rows + rows > self.config.queue_rows:
                self.rows_skipped += rows
                self.batches_skipped += 1
                return
            self._queued_rows += rows
            self._queue.append((x, y, event, rows))
            self._cv.notify()

    # -- the worker -----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                if not self._queue and not self._stopping:
                    self._cv.wait(timeout=self._seconds_left())
                if not self._queue and self._stopping:
                    self._cv.notify_all()
                    return
                item = self._queue.popleft() if self._queue else None
                self._busy = item is not None
            if item is None:  # woken by the clock: close the window if its time is up
                with self._windows, self._side():
                    self._rotate_if_due()
                continue
            x, y, event, rows = item
            try:
                self._accumulate(x, y, event, rows)
            finally:
                with self._cv:
                    self._busy = False
                    self._queued_rows -= rows
                    self._cv.notify_all()

    def _seconds_left(self) -> float | None:
        if self.config.window_seconds <= 0:
            return None
        return max(0.001, self.config.window_seconds - (time.monotonic() - self._open_since))

    def _accumulate(self, x, y, event, rows) -> None:
        x = x.reshape(rows, -1)
        y = y.reshape(rows, -1) if (y is not None and self.outputs is not None and y.dim() and y.shape[0] == rows) \
            else None
        ok_types = (torch.float32, torch.float64, torch.int32, torch.int64)
        if (x.dtype not in ok_types or x.shape[1] < self.inputs.min_columns
                or (y is not None and (y.dtype not in ok_types or y.shape[1] < self.outputs.min_columns))):
            with self._windows:
                self.rows_rejected += rows
            return
        with self._side():
            if event is not None:
                self.stream.wait_event(event)
                x.record_stream(self.stream)  # the allocator keeps x until the side stream is done with it
                if y is not None:
                    y.record_stream(self.stream)
            with self._windows:
                done = 0
                while done < rows:
                    self._rotate_if_due()
                    take = min(self.config.window_rows - self.inputs.rows, rows - done)
                    self.inputs.update(x[done:done + take])
                    if self.outputs is not None and y is not None:
                        self.outputs.update(y[done:done + take])
                    done += take
                    self.rows_seen += take
                    if self.inputs.rows >= self.config.window_rows:
                        self._close_locked()

    # -- windows --------------------------------------------------------------------------------

    def _rotate_if_due(self) -> None:
        if self.config.window_seconds > 0 and time.monotonic() - self._open_since >= self.config.window_seconds:
            self._close_locked()

    def _close_locked(self) -> None:
        if self.inputs.rows == 0:  # nothing to close: restart the clock
            self._open_since, self._open_start = time.monotonic(), time.time()
            return
        inputs, outputs = self._accumulators()
        self.native.push_closed(inputs, outputs, self._open_start, time.time())
        self.inputs.reset()
        if self.outputs is not None:
            self.outputs.reset()
        self._open_since, self._open_start = time.monotonic(), time.time()

    def _accumulators(self):
        if self.stream is not None:
            self.stream.synchronize()
        return self.inputs.accumulator(), self.outputs.accumulator() if self.outputs is not None else None

    def _side(self):
        """Work on the accumulators is ordered on the side stream, whichever thread issues it."""
        return torch.cuda.stream(self.stream) if self.stream is not None else _nullcontext()

    def open_window(self) -> dict:
        """The open window, as the native monitor's windows() gives it."""
        with self._windows, self._side():
            inputs, outputs = self._accumulators()
            return {"start": self._open_start, "end": time.time(), "closed": False, "inputs": inputs,
                    "outputs": outputs}

    def close_window(self) -> None:
        with self._windows, self._side():
            self._close_locked()

    def flush(self) -> None:
        with self._cv:
            self._cv.wait_for(lambda: (not self._queue and not self._busy) or not self._thread.is_alive())
        if self.stream is not None:
            self.stream.synchronize()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join()

    def stats(self) -> dict:
        native = self.native.stats()
        with self._cv:
            queued = self._queued_rows
            skipped, batches = self.rows_skipped, self.batches_skipped
        with self._windows:
            return {"rows_seen": self.rows_seen, "rows_skipped": skipped, "batches_skipped": batches,
                    "rows_rejected": self.rows_rejected, "windows_closed": native["windows_closed"],
                    "queued_rows": queued}


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
