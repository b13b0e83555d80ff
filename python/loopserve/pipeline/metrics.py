"""The pipeline's Prometheus metrics, read from the store at scrape time (so they survive restarts
and agree with `loopserve pipeline status`): runs by model and status, and trigger decisions.

`loopserve pipeline watch CONFIG --metrics-port 9101` serves them at :9101/metrics.
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class PipelineCollector(Collector):
    """Opens the store for each scrape (the scrape runs on prometheus_client's own thread, and a
    store connection belongs to one thread)."""

    def __init__(self, store_location: str | None):
        self.store_location = store_location

    def collect(self) -> Iterable:
        from loopserve.pipeline.records import PipelineRecords
        from loopserve.store import Store

        runs = CounterMetricFamily("loopserve_pipeline_runs", "Pipeline runs started, by their status now",
                                   labels=["model", "status"])
        decisions = CounterMetricFamily("loopserve_pipeline_decisions", "Trigger decisions recorded (kept: the "
                                        "newest 10,000 per model)", labels=["model", "fire"])
        last = GaugeMetricFamily("loopserve_pipeline_last_run_start_seconds", "When the latest run started "
                                 "(unix seconds)", labels=["model"])
        with Store(self.store_location) as store:
            PipelineRecords(store)  # the tables, on a store nothing has written to yet
            for model, status, n in store.db.execute(
                    "SELECT model, status, COUNT(*) FROM pipeline_runs GROUP BY model, status ORDER BY model, status"):
                runs.add_metric([model, status], n)
            for model, fire, n in store.db.execute(
                    "SELECT model, fire, COUNT(*) FROM pipeline_decisions GROUP BY model, fire ORDER BY model, fire"):
                decisions.add_metric([model, "true" if fire else "false"], n)
            for model, started in store.db.execute("SELECT model, MAX(started_at) FROM pipeline_runs GROUP BY model"):
                last.add_metric([model], started)
        yield from (runs, decisions, last)


def serve_metrics(store_location: str | None, port: int, host: str = "0.0.0.0"):
    """Serve the pipeline's metrics on a background thread; returns the HTTP server (shutdown() stops it)."""
    registry = CollectorRegistry()
    registry.register(PipelineCollector(store_location))
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server
