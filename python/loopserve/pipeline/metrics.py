"""The pipeline's Prometheus metrics, read from the store at scrape time (so they survive restarts
and agree with `loopserve pipeline status`): runs by model and status, and trigger decisions.

Only what never goes down is a counter: runs started (a run is never deleted). Runs by their
status now (a run leaves "running" when it ends) and the decisions kept (old ones are pruned)
go down too, so they are gauges: as counters, each drop would read as a counter reset to rate().

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

        runs = GaugeMetricFamily("loopserve_pipeline_runs", "Pipeline runs by their status now",
                                 labels=["model", "status"])
        runs_started = CounterMetricFamily("loopserve_pipeline_runs_started", "Pipeline runs started", labels=["model"])
        decisions = GaugeMetricFamily("loopserve_pipeline_decisions", "Trigger decisions kept in the store (the "
                                      "newest 10,000 per model)", labels=["model", "fire"])
        last = GaugeMetricFamily("loopserve_pipeline_last_run_start_seconds", "When the latest run started "
                                 "(unix seconds)", labels=["model"])
        with Store(self.store_location) as store:
            PipelineRecords(store)  # the tables, on a store nothing has written to yet
            by_status: dict[str, dict[str, int]] = {}
            for model, status, n in store.db.execute(
                    "SELECT model, status, COUNT(*) FROM pipeline_runs GROUP BY model, status ORDER BY model, status"):
                by_status.setdefault(model, {"running": 0})[status] = n
            for model, counts in by_status.items():  # "running" stays, at 0, once the run ends
                for status, n in sorted(counts.items()):
                    runs.add_metric([model, status], n)
                runs_started.add_metric([model], sum(counts.values()))
            for model, fire, n in store.db.execute(
                    "SELECT model, fire, COUNT(*) FROM pipeline_decisions GROUP BY model, fire ORDER BY model, fire"):
                decisions.add_metric([model, "true" if fire else "false"], n)
            for model, started in store.db.execute("SELECT model, MAX(started_at) FROM pipeline_runs GROUP BY model"):
                last.add_metric([model], started)
        yield from (runs, runs_started, decisions, last)


def serve_metrics(store_location: str | None, port: int, host: str = "0.0.0.0"):
    """Serve the pipeline's metrics on a background thread; returns the HTTP server (shutdown() stops it)."""
    registry = CollectorRegistry()
    registry.register(PipelineCollector(store_location))
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server
