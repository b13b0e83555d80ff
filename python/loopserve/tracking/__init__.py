"""Experiment tracking: runs with params, metrics over steps, tags, artifacts, and where they ran.

    from loopserve.tracking import start_run
    with start_run("fraud", params={"lr": 0.01}, data_snapshot=snap.id,
                   entrypoint="mypkg.train:train") as run:
        run.log_metric("loss", 0.3, step=1)
        run.log_artifact("model.onnx")

Metadata lives in the store's SQLite database (tables `runs`, `run_params`, `run_metrics`,
`run_tags`, `run_artifacts`); artifacts in its content-addressed blob store.
"""

from loopserve.tracking.env import code_version
from loopserve.tracking.errors import RunNotFound, TrackingError
from loopserve.tracking.query import compare_runs, get_run, list_runs, metric_history
from loopserve.tracking.records import CodeVersion, MetricPoint, Run, RunArtifact, RunComparison
from loopserve.tracking.run import ActiveRun, start_run
from loopserve.tracking.times import InvalidTimestamp, parse_time

__all__ = ["ActiveRun", "CodeVersion", "InvalidTimestamp", "MetricPoint", "Run", "RunArtifact", "RunComparison",
           "RunNotFound", "TrackingError", "code_version", "compare_runs", "get_run", "list_runs",
           "metric_history", "parse_time", "start_run"]
