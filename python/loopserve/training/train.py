"""`train(config)`: fit the model, export and check it, profile it, gate it, publish the version.

Runs as a world of one, or data-parallel under `torchrun` (DDP; gloo on the CPU, NCCL on GPUs).
Every process loads the same rows and splits them the same way (seeded); a DistributedSampler
gives each process its share of every global batch, so N processes with batch B/N each take
the same steps as one process with batch B. Rank 0 alone tracks, exports and publishes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import msgspec
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from loopserve.errors import ConfigError
from loopserve.training import distributed as dd
from loopserve.training import export as ex
from loopserve.training import lifecycle as lc
from loopserve.training import metrics as m
from loopserve.training.config import DataSpec, TrainConfig, config_from_dict, to_dict
from loopserve.training.data import TabularData, load_data, split
from loopserve.training.model import TabularMLP, fit_normalization, predict

ENTRYPOINT = "loopserve.training.train:reproduce_entrypoint"
RESULT_FILE = "train_result.json"


class TrainResult(msgspec.Struct):
    model_name: str
    version: int
    model_dir: str  # <output.dir>/<name>: what `loopserve serve` / Model.load take
    version_dir: str  # where the version's files are (a `rejected/` directory if a gate failed)
    published: bool  # the version is in the model repository (no gates, or every gate passed)
    onnx: str
    torchscript: str | None
    profile: str | None
    gate_report: str | None
    gates_passed: bool | None  # None: no gates configured
    gate_failures: list[str]
    metrics: dict[str, float]
    run_id: str | None
    data_snapshot: str | None
    registered_version: int | None
    world_size: int
    rows_train: int
    rows_validation: int
    seconds: float


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled)


def _fit(config: TrainConfig, world: dd.World, train: TabularData, val: TabularData, run, show: bool) -> TabularMLP:
    torch.manual_seed(config.seed)  # same initial weights in every process (DDP also broadcasts rank 0's)
    model = TabularMLP(train.feature_names, train.categorical, config.model)
    fit_normalization(model, train.features)
    model.to(world.device)
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[world.device.index] if world.device.type == "cuda" else None)
    else:
        wrapped = model
    if config.batch_size < world.size:
        raise ConfigError(f"batch_size: {config.batch_size} is smaller than the {world.size} processes; expected at "
                          f"least one row per process per step")
    local_batch = config.batch_size // world.size
    dataset = TensorDataset(torch.from_numpy(train.features), torch.from_numpy(train.labels.astype(np.float32)))
    sampler = DistributedSampler(dataset, num_replicas=world.size, rank=world.rank, shuffle=True, seed=config.seed)
    loader = DataLoader(dataset, batch_size=local_batch, sampler=sampler)
    optimizer = torch.optim.Adam(wrapped.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    pos_weight = torch.tensor([config.pos_weight], device=world.device)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    with _progress(show) as bar:
        task = bar.add_task("training", total=config.epochs * len(loader), info="")
        for epoch in range(config.epochs):
            sampler.set_epoch(epoch)
            model.train()
            total, count = 0.0, 0
            for x, y in loader:
                x, y = x.to(world.device), y.to(world.device)
                optimizer.zero_grad(set_to_none=True)
                # Through the wrapper's forward, so DDP's hooks see the step and all-reduce the gradients.
                loss = loss_fn(wrapped(x, logits=True).reshape(-1), y)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(y)
                count += len(y)
                bar.update(task, advance=1)
            train_loss = dd.mean_across(world, total / max(count, 1))
            scores = predict(model, val.features)
            epoch_metrics = {"train_loss": train_loss, "val_loss": m.log_loss(val.labels, scores),
                             "val_auc": m.roc_auc(val.labels, scores)}
            if world.is_main:
                run.log_metrics({k: v for k, v in epoch_metrics.items() if np.isfinite(v)}, step=epoch)
            bar.update(task, description=f"epoch {epoch + 1}/{config.epochs}",
                       info=f"loss {train_loss:.4f} val auc {epoch_metrics['val_auc']:.4f}")
    model.eval()
    return model.cpu()


def _validation_metrics(config: TrainConfig, model: TabularMLP, val: TabularData) -> tuple[dict[str, float], np.ndarray]:
    scores = predict(model, val.features)
    threshold = config.gates.decision_threshold if config.gates else 0.5
    out = {"val_auc": m.roc_auc(val.labels, scores), "val_accuracy": m.accuracy(val.labels, scores, threshold),
           "val_loss": m.log_loss(val.labels, scores), "val_positive_rate": float(np.mean(scores >= threshold))}
    if val.groups is not None:
        stats = m.group_stats(val.labels, scores, val.groups, threshold)
        dp = m.demographic_parity_difference(stats)
        if dp is not None:
            out["val_demographic_parity_difference"] = dp[0]
        eo = m.equal_opportunity_difference(stats, 1)
        if eo is not None:
            out["val_equal_opportunity_difference"] = eo[0]
    return {k: float(v) for k, v in out.items() if np.isfinite(v)}, scores


def _publish(config: TrainConfig, model: TabularMLP, train: TabularData, val: TabularData, val_scores: np.ndarray,
             store, run, metrics: dict[str, float]) -> dict:
    """Rank 0: export, check, profile, gate, and move the version into place (or aside)."""
    out, spec = config.output, config.model
    model_dir = Path(out.dir) / out.name
    version = ex.next_version(model_dir) if out.version == "next" else out.version
    width = len(train.feature_names)
    config_text = ex.model_config_text(out.name, spec.input_name, width, spec.output_name, out.max_batch_size,
                                       out.max_queue_delay_us, out.instances)
    ex.ensure_model_config(model_dir, config_text, spec.input_name, width, spec.output_name)
    staging = ex.VersionDir(model_dir, version)
    try:
        (staging.path / "config.yaml").write_text(config_text)
        vdir = staging.path / str(version)
        vdir.mkdir()
        # The version's own copy of its model config: registered, the directory serves alone.
        (vdir / "config.yaml").write_text(config_text)
        onnx = ex.export_onnx(model, vdir / "model.onnx", width, spec.input_name, spec.output_name)
        metrics["export_onnx_max_abs_diff"] = ex.check_agreement(
            "the ONNX export", val_scores, ex.onnx_predict(onnx, val.features, spec.input_name), config.export.tolerance)
        ts = None
        if config.export.torchscript:
            ts = ex.export_torchscript(model, vdir / "model.pt", width)
            metrics["export_torchscript_max_abs_diff"] = ex.check_agreement(
                "the TorchScript export", val_scores, ex.torchscript_predict(ts, val.features), config.export.tolerance)
        profile = lc.write_profile(vdir, train.features, train.feature_names, train.categorical,
                                   predict(model, train.features), spec.output_name, config.profile_bins)
        threshold = config.gates.decision_threshold if config.gates else 0.5
        signature = ex.Signature(spec.input_name, spec.output_name, train.feature_names, train.categorical,
                                 threshold, config.data.label, config.data.group)
        (vdir / ex.SIGNATURE_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(signature), indent=1))
        report = None
        if config.gates is not None:
            from loopserve.training.gates import evaluate_gates

            holdout = load_data(config.holdout, key="holdout", store=store)
            if holdout.feature_names != train.feature_names:
                raise ConfigError(f"holdout.features: the holdout's features {holdout.feature_names} differ from "
                                  f"the training features {train.feature_names}")
            report = evaluate_gates(staging.path, holdout, config.gates, config.production_model,
                                    candidate_version=version, candidate_label=f"{out.name} v{version} (candidate)")
            report.save(vdir)
            metrics.update({f"gate_{k}": v for k, v in report.metrics.items()})
        passed = report is None or report.passed
        final = staging.commit(vdir) if passed else staging.reject(vdir)
        return dict(model_dir=str(model_dir), version=version, version_dir=str(final), published=passed,
                    onnx=str(final / onnx.name), torchscript=None if ts is None else str(final / ts.name),
                    profile=None if profile is None else str(final / profile.name),
                    gate_report=None if report is None else str(final / "gates.json"),
                    gates_passed=None if report is None else report.passed,
                    gate_failures=[] if report is None else [g.reason for g in report.failures()])
    except BaseException:
        staging.abandon()
        raise


def train(config: TrainConfig, *, quiet: bool = False, run=None) -> TrainResult | None:
    """Train per `config`; the TrainResult on rank 0 (None on other ranks). `run`: log into this
    tracked run instead of starting one (what reproducing a version does)."""
    started = time.perf_counter()
    world = dd.setup(config.device)
    try:
        show = world.is_main and not quiet and sys.stderr.isatty()
        needs_store = world.is_main and (config.tracking.enabled or config.registry.enabled) \
            or config.data.snapshot is not None or (config.holdout is not None and config.holdout.snapshot is not None)
        with lc.open_store(config.store, needs_store) as store:
            data = load_data(config.data, store=store)
            train_rows, val = split(data, config.validation_split, config.seed)
            snapshot_id = data.snapshot_id
            if world.is_main and run is None and store is not None and snapshot_id is None \
                    and config.tracking.enabled and config.tracking.snapshot_generated:
                snapshot_id = lc.snapshot_columns(store, data.columns, f"{config.output.name}-train")
            params = {"config": to_dict(config), "world_size": world.size, "epochs": config.epochs,
                      "batch_size": config.batch_size, "lr": config.lr, "hidden": list(config.model.hidden),
                      "seed": config.seed, "features": data.feature_names, "categorical": data.categorical}
            if run is not None or not world.is_main or not config.tracking.enabled:
                context = _given(run or lc.NullRun())
            else:
                context = lc.tracked_run(store, config.tracking.experiment or config.output.name, params,
                                         snapshot_id, {"model": config.output.name}, ENTRYPOINT)
            with context as active:
                model = _fit(config, world, train_rows, val, active, show)
                if not world.is_main:
                    return None
                metrics, val_scores = _validation_metrics(config, model, val)
                published = _publish(config, model, train_rows, val, val_scores, store, active, metrics)
                # Run metrics are what reproducing compares: leave out the timing, which no rerun repeats.
                active.log_metrics({k: v for k, v in metrics.items() if "latency" not in k})
                active.set_tag("gates", {None: "none", True: "passed", False: "failed"}[published["gates_passed"]])
                active.log_artifact(published["version_dir"], name="model")
                registered = None
                if config.registry.enabled and published["published"]:
                    registered = lc.register(store, config.output.name, Path(published["version_dir"]), active.id,
                                             snapshot_id, metrics, {"gates": "passed" if published["gates_passed"]
                                                                    else "none"},
                                             config.registry.parent, config.registry.alias).version
                result = TrainResult(model_name=config.output.name, metrics=metrics, run_id=active.id,
                                     data_snapshot=snapshot_id, registered_version=registered, world_size=world.size,
                                     rows_train=len(train_rows), rows_validation=len(val),
                                     seconds=time.perf_counter() - started, **published)
                Path(result.version_dir, RESULT_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(result),
                                                                                     indent=1))
                return result
    finally:
        dd.teardown(world)


class _given:
    """A context manager that yields an existing run (or NullRun) and leaves its ending to its owner."""

    def __init__(self, run):
        self.run = run

    def __enter__(self):
        return self.run

    def __exit__(self, *exc):
        return False


def reproduce_entrypoint(params: dict, data_snapshot: str | None, run) -> dict[str, float]:
    """What `loopserve.registry.reproduce` calls: the recorded config, on the recorded data snapshot,
    into the given run. The version goes to a scratch directory, never into the served repository,
    and is not registered."""
    import tempfile

    config = config_from_dict(params["config"], "recorded run config")
    if data_snapshot is not None:
        d = config.data
        config = msgspec.structs.replace(config, data=DataSpec(snapshot=data_snapshot, features=params["features"],
                                                               label=d.label, group=d.group,
                                                               categorical=params["categorical"]))
    scratch = tempfile.mkdtemp(prefix="loopserve-reproduce-")
    run.set_tag("reproduced_into", scratch)
    config = msgspec.structs.replace(config, registry=msgspec.structs.replace(config.registry, enabled=False),
                                     output=msgspec.structs.replace(config.output, dir=scratch, version="next"))
    result = train(config, quiet=True, run=run)
    return dict(result.metrics) if result is not None else {}
