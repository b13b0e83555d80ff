"""Prometheus metrics at GET /metrics, under Triton's names where Triton has one.

The counters are read from the native batchers' statistics when Prometheus scrapes, so the
serving path pays nothing for them; only the end-to-end latency histogram is observed per
request.
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from loopserve.server.latency import LatencyHistogram
from loopserve.serving.canary import VersionMetrics
from loopserve.serving.repository import ModelRepository

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# name -> (help, stats field, scale)
_COUNTERS = {
    "nv_inference_request_success": ("Successful inference requests", "success", 1),
    "nv_inference_count": ("Inferences performed (rows; a batch of N counts N)", "inference_count", 1),
    "nv_inference_exec_count": ("Model executions (batches)", "execution_count", 1),
    "nv_inference_request_duration_us": ("Cumulative request duration in the batcher, queue and compute (us)",
                                         "success_ns", 1e-3),
    "nv_inference_queue_duration_us": ("Cumulative time requests waited in the queue (us)", "queue_ns", 1e-3),
    "nv_inference_compute_input_duration_us": ("Cumulative time gathering inputs, per request (us)",
                                               "compute_input_ns", 1e-3),
    "nv_inference_compute_infer_duration_us": ("Cumulative model execution time, per request (us)",
                                               "compute_infer_ns", 1e-3),
    "nv_inference_compute_output_duration_us": ("Cumulative time scattering outputs, per request (us)",
                                                "compute_output_ns", 1e-3),
    "loopserve_inline_runs": ("Requests run on the event loop's thread: lone, quick, nothing to wait for",
                              "inline_runs", 1),
}


class BatcherCollector(Collector):
    """Reads every loaded model's native statistics at scrape time."""

    def __init__(self, repository: ModelRepository):
        self.repository = repository

    def collect(self) -> Iterable:
        labels = ["model", "version"]
        counters = {name: CounterMetricFamily(name, help_, labels=labels) for name, (help_, _, _) in _COUNTERS.items()}
        failure = CounterMetricFamily("nv_inference_request_failure", "Failed inference requests",
                                      labels=["model", "version", "reason"])
        queued = GaugeMetricFamily("loopserve_queue_depth", "Requests waiting in the batcher now", labels=labels)
        batch = HistogramMetricFamily("loopserve_batch_size", "Rows per executed batch", labels=labels)
        for model in self.repository.models():
            s = model.stats()
            values = [model.name, str(model.version)]
            for name, (_, field, scale) in _COUNTERS.items():
                counters[name].add_metric(values, getattr(s, field) * scale)
            failure.add_metric(values + ["BACKEND"], s.failed)
            failure.add_metric(values + ["REJECTED"], s.rejected)
            failure.add_metric(values + ["TIMEOUT"], s.timed_out)
            queued.add_metric(values, s.queued)
            sizes = s.batch_sizes
            buckets = [(str(bound), sum(b.count for size, b in sizes.items() if size <= bound))
                       for bound in BATCH_BUCKETS]
            buckets.append(("+Inf", sum(b.count for b in sizes.values())))
            batch.add_metric(values, buckets, sum(size * b.count for size, b in sizes.items()))
        yield from counters.values()
        yield failure
        yield queued
        yield batch


# statistic label -> FeatureDrift field
_DRIFT_STATISTICS = {"psi": "psi", "js_distance": "js_distance", "chi2_pvalue": "chi2_pvalue", "ks": "ks",
                     "ks_pvalue": "ks_pvalue", "wasserstein": "wasserstein", "missing_rate": "missing_rate",
                     "drifted": "drifted"}


class DriftCollector(Collector):
    """Each monitored version's latest closed drift window (computed once per window)."""

    def __init__(self, repository: ModelRepository):
        self.repository = repository

    def collect(self) -> Iterable:
        drift = GaugeMetricFamily("loopserve_drift", "Drift statistics of the latest closed window, per feature",
                                  labels=["model", "version", "feature", "statistic"])
        alert = GaugeMetricFamily("loopserve_drift_alert", "1 when the latest closed window's verdict is drift",
                                  labels=["model", "version"])
        rows = CounterMetricFamily("loopserve_drift_rows", "Rows the drift monitor accumulated",
                                   labels=["model", "version"])
        skipped = CounterMetricFamily("loopserve_drift_rows_skipped",
                                      "Rows the drift monitor skipped because it had fallen behind",
                                      labels=["model", "version"])
        for model in self.repository.models():
            if model.drift is None:
                continue
            values = [model.name, str(model.version)]
            stats = model.drift.stats()
            rows.add_metric(values, stats["rows_seen"])
            skipped.add_metric(values, stats["rows_skipped"])
            window = model.drift.latest_closed()
            alert.add_metric(values, 1.0 if window is not None and window.verdict == "drift" else 0.0)
            if window is None:
                continue
            for feature in window.features:
                for label, field in _DRIFT_STATISTICS.items():
                    value = getattr(feature, field)
                    if value is not None:
                        drift.add_metric(values + [feature.name, label], float(value))
        yield from (drift, alert, rows, skipped)


class TrafficCollector(Collector):
    """Each model's routing: the share of requests each version answers, and which is stable."""

    def __init__(self, repository: ModelRepository):
        self.repository = repository

    def collect(self) -> Iterable:
        weight = GaugeMetricFamily("loopserve_traffic_weight", "Share of the model's requests a version answers "
                                   "(0 for a loaded version that only shadows or waits)", labels=["model", "version"])
        stable = GaugeMetricFamily("loopserve_stable_version", "The version a rollback returns to", labels=["model"])
        for name, router in sorted(self.repository.routers.items()):
            if not router.versions:
                continue
            state = router.state()
            for version in state.versions:
                weight.add_metric([name, str(version)], float(state.weights.get(version, 0.0)))
            stable.add_metric([name], float(state.stable))
        yield weight
        yield stable


class FeedbackCollector(Collector):
    """Live metrics per version (`window` = "cumulative": every label so far; "last": the
    latest closed window) and label counts per status."""

    def __init__(self, repository: ModelRepository):
        self.store = repository.services.feedback

    def collect(self) -> Iterable:
        labels = ["model", "version", "window"]
        families = {
            "accuracy": GaugeMetricFamily("loopserve_live_accuracy", "Share of labelled rows predicted right",
                                          labels=labels),
            "precision": GaugeMetricFamily("loopserve_live_precision",
                                           "Binary: labelled positives among rows predicted positive", labels=labels),
            "recall": GaugeMetricFamily("loopserve_live_recall",
                                        "Binary: rows predicted positive among labelled positives", labels=labels),
        }
        rows = CounterMetricFamily("loopserve_live_labels", "Labelled rows joined to predictions",
                                   labels=["model", "version"])
        counts = CounterMetricFamily("loopserve_feedback_labels", "Feedback labels (request ids) by answer",
                                     labels=["model", "version", "status"])
        for name in sorted(self.store.models):
            for version, live in self.store.live_metrics(name, last=1).items():
                v = str(version)
                rows.add_metric([name, v], live.cumulative.labels)
                windows = [("cumulative", live.cumulative)] + [("last", w) for w in live.windows[-1:]]
                for window, metrics in windows:
                    for field, family in families.items():
                        value = getattr(metrics, field)
                        if value is not None:
                            family.add_metric([name, v, window], value)
        for name, version, status, n in self.store.label_counts():
            counts.add_metric([name, version, status], n)
        dropped = CounterMetricFamily("loopserve_feedback_dropped",
                                      "Predictions not recorded for feedback: the engine's tap was full between drains",
                                      labels=["model", "version"])
        for name, version, n in self.store.dropped_counts():
            dropped.add_metric([name, version], n)
        yield from families.values()
        yield rows
        yield counts
        yield dropped


class LatencyCollector(Collector):
    def __init__(self, histograms: dict[tuple[str, str], LatencyHistogram]):
        self.histograms = histograms

    def collect(self) -> Iterable:
        family = HistogramMetricFamily(
            "loopserve_request_duration_seconds",
            "End-to-end infer latency in the server: read, decode, queue, compute, encode",
            labels=["model", "version"])
        for (model, version), h in sorted(self.histograms.items()):
            family.add_metric([model, version], h.buckets(), h.sum)
        yield family


class OverloadCollector(Collector):
    """Infer requests refused by an HTTP process's admission (server/admission.py), per model:
    refused from their heads, before any version was chosen, so not in Triton's per-version
    nv_inference_request_failure{reason="REJECTED"}, which counts the batcher's refusals."""

    def __init__(self, refused: dict[str, int]):
        self.refused = refused

    def collect(self) -> Iterable:
        family = CounterMetricFamily("loopserve_overload_refused",
                                     "Infer requests refused 429 because the server's event loop ran later than "
                                     "http.overload_wait_ms", labels=["model"])
        for model, n in sorted(self.refused.items()):
            family.add_metric([model], n)
        yield family


class HopPollCollector(Collector):
    """With workers > 1: how often polling a ring before sleeping (http.spin_us) caught the
    message, per side: the engine's ingress (and its poll window now), and the front ends
    (summed, with the polls that missed)."""

    def __init__(self, ingress, frontends: dict[str, int]):
        self.ingress = ingress
        self.frontends = frontends

    def collect(self) -> Iterable:
        polls = CounterMetricFamily("loopserve_hop_polls", "Polls of a ring before sleeping, by side and outcome",
                                    labels=["side", "outcome"])
        stats = self.ingress.stats()
        polls.add_metric(["engine", "caught"], stats["spins"])
        for outcome in ("caught", "missed"):
            polls.add_metric(["frontend", outcome], self.frontends.get(outcome, 0))
        yield polls
        window = GaugeMetricFamily("loopserve_hop_poll_window_us",
                                   "How long the engine's ingress polls its rings before it sleeps now (adaptive)")
        window.add_metric([], stats["spin_window_us"])
        yield window


class NativeHttpCollector(Collector):
    """With http.native_infer: what the engine's native HTTP path did (csrc/http/): connections
    it accepted and handed to a front end, infer requests it answered itself."""

    def __init__(self, native_http):
        self.native_http = native_http

    def collect(self) -> Iterable:
        stats = self.native_http.stats()
        connections = CounterMetricFamily("loopserve_native_http_connections",
                                          "Connections the native HTTP path accepted, and those it handed to a "
                                          "front end (other routes, requests it does not take, slow clients)",
                                          labels=["outcome"])
        connections.add_metric(["accepted"], stats["accepted"])
        connections.add_metric(["handed_off"], stats["handed_off"])
        connections.add_metric(["handoff_failed"], stats["handoff_failed"])
        connections.add_metric(["send_timeout"], stats["send_timeouts"])
        yield connections
        served = CounterMetricFamily("loopserve_native_http_requests", "Infer requests the native HTTP path answered")
        served.add_metric([], stats["served"])
        yield served
        open_now = GaugeMetricFamily("loopserve_native_http_open_connections",
                                     "Connections the native HTTP path holds now")
        open_now.add_metric([], stats["connections"])
        yield open_now


class ServerMetrics:
    """The registry /metrics exposes: native statistics plus the server's own latency."""

    def __init__(self, repository: ModelRepository):
        self.registry = CollectorRegistry()
        self.registry.register(BatcherCollector(repository))
        self.registry.register(DriftCollector(repository))
        self.registry.register(FeedbackCollector(repository))
        self.registry.register(TrafficCollector(repository))
        # Observed per request by the in-process infer route, or read from the front ends.
        self.latency_histograms: dict[tuple[str, str], LatencyHistogram] = {}
        self.registry.register(LatencyCollector(self.latency_histograms))
        # Counted by the in-process admission, or summed from the front ends'.
        self.overload_refused: dict[str, int] = {}
        self.registry.register(OverloadCollector(self.overload_refused))

    def version_metrics(self, model) -> VersionMetrics:
        """What the rollback rule looks at for one loaded version."""
        s = model.stats()
        latency = self.latency(model.name, str(model.version))
        return VersionMetrics(model.version, s.success + s.failed + s.timed_out, s.failed + s.timed_out,
                              latency.quantile(0.99), tuple(latency.counts))

    def latency(self, model: str, version: str) -> LatencyHistogram:
        key = (model, version)
        h = self.latency_histograms.get(key)
        if h is None:
            h = self.latency_histograms[key] = LatencyHistogram()
        return h
