"""Model configuration: the schema (msgspec Structs) and the loader for YAML, TOML and JSON.

Names follow Triton's model configuration where Triton has one (max_batch_size,
preferred_batch_sizes, datatype names such as FP32, dims with -1 for any size), so a
Triton user can read a loopserve config without a manual.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from loopserve.errors import ConfigError

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"
]
Backend = Literal["onnxruntime", "torch", "python"]
Dim = Annotated[int, Meta(ge=-1)]
Device = Annotated[str, Meta(pattern=r"^(cpu|cuda(:\d+)?)$")]
NonNegative = Annotated[int, Meta(ge=0)]
Positive = Annotated[int, Meta(ge=1)]
MAX_INSTANCES = 64


class TensorConfig(Struct, forbid_unknown_fields=True, frozen=True):
    """A declared input or output. With batching, `dims` excludes the batch dimension."""

    name: Annotated[str, Meta(min_length=1)]
    datatype: Datatype
    dims: list[Dim]


class DynamicBatching(Struct, forbid_unknown_fields=True, frozen=True):
    """How the native batcher forms batches (Triton's dynamic_batching, plus two knobs)."""

    preferred_batch_sizes: list[Positive] = []
    # How long the oldest queued request may wait for its batch to fill.
    max_queue_delay_us: NonNegative = 0
    # Skip that wait while waits keep gaining nothing (a lone client), so batching costs a
    # lone client nothing; wait again as soon as requests overlap.
    adaptive_queue_delay: bool = True
    # Requests that may wait at once; more are refused at once (QueueFull, HTTP 429).
    queue_capacity: Positive = 1024
    # Past saturation a request that would wait longer than this behind the batches already
    # queued (from the recent batch time) is refused at once (HTTP 429, Retry-After) instead of
    # queueing: answers stay fast for the requests taken, and clients learn to back off. 0: off.
    max_queue_wait_us: NonNegative = 1_000_000
    # A request that waits longer than this is answered TimedOut and never run; 0: no limit.
    default_timeout_us: NonNegative = 0
    # Priority 1 is served first; requests that name none get default_priority_level.
    priority_levels: Positive = 2
    default_priority_level: Positive = 2
    # A lone request with nothing to wait for runs on the caller's thread (no hand-off to a
    # worker) when the model's recent time for one request is under this; 0: never.
    inline_budget_us: NonNegative = 100


class VersionPolicy(Struct, forbid_unknown_fields=True, frozen=True):
    """Which version directories are loaded (Triton's version_policy): set one of the three."""

    latest: Positive | None = None  # the k highest versions
    specific: list[Positive] | None = None  # exactly these
    all: bool = False  # every version directory

    def choose(self, available: list[int]) -> list[int]:
        """The versions to load, ascending, from the version directories there are."""
        if self.all:
            return list(available)
        if self.specific is not None:
            return sorted(v for v in set(self.specific) if v in available)
        return sorted(available)[-(self.latest or 1):]


class Traffic(Struct, forbid_unknown_fields=True, frozen=True):
    """How requests are shared among the loaded versions (changeable at run time too)."""

    # Version -> share (any positive numbers; normalised). Empty: the highest version takes all.
    weights: dict[int, Annotated[float, Meta(ge=0)]] = {}
    # Versions that get a copy of every request: run and measured, never answering.
    shadow: list[Positive] = []


class DriftPolicy(Struct, forbid_unknown_fields=True, frozen=True):
    """When a window counts as drifted (see loopserve.monitor.verdict). The defaults aim at no
    more than 1 false alarm in 100 windows without drift."""

    alpha: Annotated[float, Meta(gt=0, lt=1)] = 0.001  # family-wise false-alarm rate per window
    min_rows: Positive = 1000  # smaller windows get no verdict
    min_psi: Annotated[float, Meta(ge=0)] = 0.005  # effect floors: significance alone is not enough
    min_ks: Annotated[float, Meta(ge=0)] = 0.02
    min_missing_change: Annotated[float, Meta(ge=0)] = 0.01
    min_expected: Annotated[float, Meta(ge=0)] = 5.0  # rarer categories are pooled into "other"


class DriftConfig(Struct, forbid_unknown_fields=True, frozen=True):
    """Drift monitoring of a model's live inputs (and outputs) against a reference profile.

    On whenever the version directory holds the profile file, unless `enabled: false`."""

    enabled: bool = True
    profile: str = "drift_profile.json"  # in the version directory
    input: str | None = None  # the monitored input tensor; default the first
    output: str | None = None  # the output watched for prediction drift; default the first
    window_rows: Positive = 10000  # a window closes after this many rows...
    window_seconds: Annotated[float, Meta(ge=0, le=1e9)] = 60.0  # ...or this long (0: rows only)
    history: Positive = 20  # closed windows kept
    queue_rows: Positive = 65536  # hand-off bound: past it, batches are skipped and counted
    quantile_sample_every: NonNegative = 0  # KLL takes each row with probability 1/n; 0: about 8k rows per window
    # Smallest and largest values kept exactly per feature (Wasserstein-1's tails): more is more
    # accurate and slower (README, "Drift monitoring").
    extremes: Annotated[int, Meta(ge=1, le=65536)] = 16
    # A window keeps every value of its numeric features while it holds at most this many rows:
    # KS and Wasserstein-1 then come from every value, not from a sample (0: always a sample).
    # 4 bytes a value for FP32 inputs (8 otherwise), per feature, for the open window and the
    # newest `exact_windows` closed ones (older ones keep the sample).
    exact_values: Annotated[int, Meta(ge=0, le=1 << 26)] = 1 << 18
    exact_windows: Annotated[int, Meta(ge=0, le=1000)] = 2
    policy: DriftPolicy = DriftPolicy()


class FeedbackConfig(Struct, forbid_unknown_fields=True, frozen=True):
    """Ground-truth feedback (POST /v2/models/{m}/feedback): the record of recent predictions
    that labels join, and the live metrics they feed (see loopserve.monitor.feedback)."""

    enabled: bool = True
    # Rows of recent predictions kept per version (one-row requests: predictions); the oldest go first.
    record_size: Positive = 100_000
    # ...and at most this many bytes of them (float32 prediction and kept input rows): a version
    # with wide outputs or inputs (an image model's) keeps fewer rows, where 100,000 would not fit.
    record_max_bytes: Positive = 256 << 20
    # A prediction older than this can no longer be labelled: its label is answered "expired".
    horizon_s: Annotated[float, Meta(gt=0)] = 3600.0
    # Binary: predicted positive when the score (one column, or column 1 of two) >= threshold.
    # null: argmax for a two-column output (logits); 0.5 for one column.
    threshold: float | None = 0.5
    # Live metrics tumble every this many labels (per version); closed windows kept.
    window_labels: Positive = 1000
    history: Positive = 20
    # Live metrics also by when the prediction was made: tumbling windows of this many seconds of
    # prediction time (a late label lands in its prediction's window); `history` of them are kept.
    window_s: Annotated[float, Meta(gt=0)] = 10.0
    # The output holding the prediction; default the first.
    output: str | None = None
    # Class names: a string label is its index here (otherwise "0"/"1"/"true"/"false" or numbers).
    classes: list[str] = []
    # Keep each request's numeric inputs (float32 rows) for labelled examples.
    keep_inputs: bool = True
    # Joined examples are appended to <spill_dir>/<model>/labels-NNNNNN.jsonl, a new file past spill_max_bytes.
    spill_dir: str | None = None
    spill_max_bytes: Positive = 64 << 20


class ModelConfig(Struct, forbid_unknown_fields=True, frozen=True):
    """One model's config file (`<model dir>/config.yaml`)."""

    # Defaults to the model directory's name.
    name: str = ""
    # Inferred from the version's model file when absent (.onnx, .pt2/.pt, .py).
    backend: Backend | None = None
    # 0: the model takes no batch dimension, and every request runs alone.
    max_batch_size: NonNegative = 0
    # May be left out for ONNX models: they are read from the model file.
    inputs: list[TensorConfig] = []
    outputs: list[TensorConfig] = []
    dynamic_batching: DynamicBatching = DynamicBatching()
    # Batches run at once, each on its own native worker thread (and its own copy of the model
    # where the backend needs one): more than 64 is a typo, not a deployment.
    instances: Annotated[int, Meta(ge=1, le=MAX_INSTANCES)] = 1
    device: Device = "cpu"
    # Intra-op threads per instance: "auto" divides the cores the front end leaves among the
    # executors (see loopserve.thread_budget); a count; 0: the runtime's own default.
    threads: str | NonNegative = "auto"
    # Let idle onnxruntime threads spin (lower latency, at the price of cores the front end
    # needs). null: off, except with threads 0 (the runtime's default).
    thread_spinning: bool | None = None
    # torch on a CUDA device: capture the model as a CUDA graph per instance for each preferred
    # batch size (batches of those sizes replay it); a model that cannot be captured fails to load.
    cuda_graphs: bool = False
    version_policy: VersionPolicy = VersionPolicy()
    traffic: Traffic = Traffic()
    # Before a version takes traffic it runs zero-filled requests of these row counts (its
    # inputs need fixed dims); a failure there fails the load and the old version serves on.
    warmup_rows: list[Positive] = []
    # And this request, if set: an .npz file (in the model directory) of arrays by input name.
    warmup_file: str | None = None
    drift: DriftConfig = DriftConfig()
    feedback: FeedbackConfig = FeedbackConfig()

    def __post_init__(self):
        if isinstance(self.threads, str) and self.threads != "auto":
            raise ValueError(f"expected 'auto', a thread count, or 0 (the runtime's own default); "
                             f"got {self.threads!r} - at `$.threads`")


def decode_config(data: bytes, fmt: str, source: str, type_: type = ModelConfig):
    """Decodes a config of the given format ('yaml', 'toml', 'json'); errors name `source`."""
    decoders = {"yaml": msgspec.yaml.decode, "toml": msgspec.toml.decode, "json": msgspec.json.decode}
    if fmt not in decoders:
        raise ConfigError(f"{source}: unknown config format {fmt!r}; expected .yaml, .yml, .toml or .json")
    try:
        return decoders[fmt](data, type=type_)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise ConfigError(f"{source}: {e}") from None


def load_config(path: str | Path, type_: type = ModelConfig):
    path = Path(path)
    fmt = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".json": "json"}.get(path.suffix, path.suffix)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror}") from None
    return decode_config(data, fmt, str(path), type_)
