"""One instance of a torch model on a CUDA device: its own stream, its pinned output buffers,
and (with `cuda_graphs: true`) a CUDA graph per preferred batch size.

Instances on their own streams overlap one another's host<->device copies and kernels (on the
default stream every copy and kernel of every instance is serialized). Per batch: the inputs
(already gathered by the batcher into this instance's pinned buffers) go to the device with
asynchronous copies on the lane's stream, the model runs there, the outputs come back with
asynchronous copies into pinned memory, and the thread waits for the stream alone (the GIL is
released while it waits), not for the whole device.
"""

from __future__ import annotations

import numpy as np
import torch

from loopserve.backends.base import NUMPY_DTYPES
from loopserve.errors import ConfigError


class CudaLane:
    """Not thread-safe: one instance's worker thread uses it."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self._pinned_out: dict[str, torch.Tensor] = {}  # output name -> pinned bytes, grown on demand
        self._graphs: dict[int, tuple] = {}  # rows -> (graph, static inputs, static outputs)

    def capture(self, module, inputs, sizes) -> None:
        """A CUDA graph of `module` for each batch size; ConfigError naming why when it cannot."""
        for t in inputs:
            if t.datatype == "BYTES" or any(d < 0 for d in t.dims):
                raise ConfigError(f"cuda_graphs: input '{t.name}' has no fixed shape ({t.datatype} {t.dims}); "
                                  "a CUDA graph replays fixed shapes only")
        for rows in sizes:
            static = [torch.zeros((rows, *t.dims), dtype=_torch_dtype(t.datatype), device=self.device) for t in inputs]
            try:
                with torch.cuda.stream(self.stream):
                    for _ in range(2):  # warm up (lazy init, autotuning) outside the capture
                        module(*static)
                self.stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.stream):
                    out = module(*static)
            except Exception as e:
                raise ConfigError(f"cuda_graphs: the model cannot be captured as a CUDA graph at batch size {rows}: "
                                  f"{type(e).__name__}: {e}; set cuda_graphs: false") from None
            self._graphs[rows] = (graph, static, out)

    def run(self, backend, inputs) -> dict:
        names = [t.name for t in backend.inputs]
        with torch.cuda.stream(self.stream):
            tensors = [backend._to_device(inputs[n]) for n in names]
            rows = tensors[0].shape[0] if tensors and tensors[0].dim() else 0
            graph = self._graphs.get(rows)
            if graph is not None:
                g, static, out = graph
                for dst, src in zip(static, tensors):
                    dst.copy_(src, non_blocking=True)
                g.replay()
                outputs = backend.named_outputs(out)
            else:
                outputs = backend.named_outputs(backend.module(*tensors))
            if backend.drift_observer is not None:  # records an event on this stream; the monitor waits on it
                seen = [outputs.get(n) for n in backend._output_names]
                if graph is not None:  # the graph's outputs are overwritten by its next replay
                    seen = [v.clone() if isinstance(v, torch.Tensor) else v for v in seen]
                backend.drift_observer.observe_batch(tensors, seen)
            host = {name: self._to_pinned(name, value) for name, value in outputs.items()}
        self.stream.synchronize()  # this lane's work only; torch releases the GIL while waiting
        return host

    def _to_pinned(self, name: str, value):
        if not isinstance(value, torch.Tensor):
            return np.asarray(value)
        value = value.detach()
        nbytes = value.numel() * value.element_size()
        buf = self._pinned_out.get(name)
        if buf is None or buf.numel() < nbytes:
            buf = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=True)
            self._pinned_out[name] = buf
        dst = buf[:nbytes].view(value.dtype).view(value.shape)
        dst.copy_(value, non_blocking=True)
        # A view of the pinned buffer: the executor copies it out before this lane runs again.
        return dst.numpy()


def _torch_dtype(datatype: str) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=NUMPY_DTYPES[datatype])).dtype
