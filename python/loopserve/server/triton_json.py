"""Model metadata, configuration and statistics in the JSON shapes Triton answers with,
so tritonclient and perf_analyzer read them unchanged."""

from __future__ import annotations

from loopserve.serving.model import Model


def _shape(model: Model, dims: list[int]) -> list[int]:
    return ([-1] if model.config.max_batch_size > 0 else []) + list(dims)


def model_metadata(model: Model, versions: list[int]) -> dict:
    return {
        "name": model.name,
        "versions": [str(v) for v in versions],
        "platform": model.backend.platform or model.backend.kind,
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": _shape(model, t.dims)} for t in model.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": _shape(model, t.dims)} for t in model.outputs],
    }


def model_config(model: Model) -> dict:
    c = model.config
    batching = c.dynamic_batching
    gpu = c.device.startswith("cuda")
    config = {
        "name": model.name,
        "platform": model.backend.platform,
        "backend": model.backend.kind,
        "version_policy": _version_policy(c),
        "max_batch_size": c.max_batch_size,
        "input": [{"name": t.name, "data_type": "TYPE_" + _type_name(t.datatype), "dims": list(t.dims)}
                  for t in model.inputs],
        "output": [{"name": t.name, "data_type": "TYPE_" + _type_name(t.datatype), "dims": list(t.dims)}
                   for t in model.outputs],
        "instance_group": [{
            "name": f"{model.name}_0",
            "kind": "KIND_GPU" if gpu else "KIND_CPU",
            "count": c.instances,
            "gpus": [int(c.device.partition(":")[2] or 0)] if gpu else [],
        }],
    }
    if model.backend.thread_budget is not None:  # what the executors run with, and why
        config["parameters"] = model.backend.thread_budget.parameters()
    if c.max_batch_size > 0:
        config["dynamic_batching"] = {
            "preferred_batch_size": list(batching.preferred_batch_sizes),
            "max_queue_delay_microseconds": batching.max_queue_delay_us,
            "priority_levels": batching.priority_levels,
            "default_priority_level": batching.default_priority_level,
            "default_queue_policy": {
                "max_queue_size": batching.queue_capacity,
                "default_timeout_microseconds": batching.default_timeout_us,
            },
        }
    return config


def _version_policy(c) -> dict:
    p = c.version_policy
    if p.all:
        return {"all": {}}
    if p.specific is not None:
        return {"specific": {"versions": list(p.specific)}}
    return {"latest": {"num_versions": p.latest or 1}}


def _type_name(datatype: str) -> str:
    # Triton's config says TYPE_STRING where the protocol says BYTES.
    return "STRING" if datatype == "BYTES" else datatype


def _duration(count: int, ns: int) -> dict:
    return {"count": count, "ns": ns}


def model_stats(model: Model) -> dict:
    s = model.stats()
    ran = s.success + s.failed  # requests that reached the model
    return {
        "name": model.name,
        "version": str(model.version),
        "last_inference": s.last_inference_ms,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {
            "success": _duration(s.success, s.success_ns),
            "fail": _duration(s.failed + s.timed_out, s.failed_ns),
            "queue": _duration(ran, s.queue_ns),
            "compute_input": _duration(ran, s.compute_input_ns),
            "compute_infer": _duration(ran, s.compute_infer_ns),
            "compute_output": _duration(ran, s.compute_output_ns),
            "cache_hit": _duration(0, 0),
            "cache_miss": _duration(0, 0),
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": _duration(b.count, b.compute_input_ns),
                "compute_infer": _duration(b.count, b.compute_infer_ns),
                "compute_output": _duration(b.count, b.compute_output_ns),
            }
            for size, b in sorted(s.batch_sizes.items())
        ],
    }
