"""ONNX models on onnxruntime."""

from __future__ import annotations

from pathlib import Path

from loopserve.backends.base import Backend
from loopserve.config import ModelConfig, TensorConfig
from loopserve.errors import ConfigError
from loopserve.thread_budget import budget_for

# onnxruntime's type strings, as the protocol names them.
ORT_DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


class OnnxBackend(Backend):
    kind = "onnxruntime"
    platform = "onnxruntime_onnx"  # as Triton names it in model metadata
    def __init__(self, config: ModelConfig, model_file: Path):
        super().__init__(config)
        import onnxruntime as ort

        options = ort.SessionOptions()
        self.thread_budget = budget_for(config)
        if self.thread_budget.intra_op:
            options.intra_op_num_threads = self.thread_budget.intra_op
            options.inter_op_num_threads = 1  # nodes run one at a time (sequential execution) anyway
        if self.thread_budget.spinning is not None:
            spin = str(int(self.thread_budget.spinning))
            options.add_session_config_entry("session.intra_op.allow_spinning", spin)
            options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        if config.device.startswith("cuda"):
            device_id = int(config.device.partition(":")[2] or 0)
            providers = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(model_file), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own types for bad files
            raise ConfigError(f"{model_file}: onnxruntime cannot load it: {e}") from None
        found_inputs = self._signature(self.session.get_inputs(), model_file)
        found_outputs = self._signature(self.session.get_outputs(), model_file)
        self.inputs = self._reconcile("input", self.inputs, found_inputs, model_file)
        self.outputs = self._reconcile("output", self.outputs, found_outputs, model_file)
        self._output_names = [t.name for t in self.outputs]
        # The session's own binding, without the Python wrapper's per-call checks (~3 us a
        # call, most of a tiny model's cost); the public run() where it is missing.
        native = getattr(self.session, "_sess", None)
        self._run = native.run if hasattr(native, "run") else self.session.run

    def _signature(self, args, model_file: Path) -> list[TensorConfig]:
        batching = self.config.max_batch_size > 0
        out = []
        for a in args:
            if a.type not in ORT_DATATYPES:
                raise ConfigError(f"{model_file}: tensor '{a.name}' has type {a.type}, which loopserve cannot serve")
            dims = [d if isinstance(d, int) and d >= 0 else -1 for d in a.shape]
            if batching:
                if not dims:
                    raise ConfigError(f"{model_file}: tensor '{a.name}' has no batch dimension, "
                                      "but max_batch_size > 0; set max_batch_size: 0")
                dims = dims[1:]
            out.append(TensorConfig(a.name, ORT_DATATYPES[a.type], dims))
        return out

    @staticmethod
    def _reconcile(kind: str, declared: list[TensorConfig], found: list[TensorConfig], model_file: Path):
        """The model file's signature, checked against the config's where it declares one."""
        if not declared:
            return found
        by_name = {t.name: t for t in found}
        for t in declared:
            f = by_name.get(t.name)
            if f is None:
                raise ConfigError(f"{model_file}: the config declares {kind} '{t.name}', but the model has "
                                  f"{kind}s {sorted(by_name)}")
            if f.datatype != t.datatype:
                raise ConfigError(f"{model_file}: {kind} '{t.name}' is {f.datatype} in the model, "
                                  f"{t.datatype} in the config")
            if len(f.dims) != len(t.dims) or any(a != b and a != -1 for a, b in zip(f.dims, t.dims)):
                raise ConfigError(f"{model_file}: {kind} '{t.name}' has dims {f.dims} in the model, "
                                  f"{t.dims} in the config")
        if kind == "input" and len(declared) != len(found):
            raise ConfigError(f"{model_file}: the model takes inputs {[t.name for t in found]}; "
                              f"the config declares {[t.name for t in declared]}")
        return declared

    def __call__(self, inputs):
        results = self._run(self._output_names, inputs, None)
        return dict(zip(self._output_names, results))
