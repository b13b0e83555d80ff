"""A fleet of replicas seen as one server: their drift sketches and live accuracy merged into one
window per model version, so a drift spread thin over many replicas is still caught.

    view = FleetView(["http://10.0.0.5:8000", "http://10.0.0.6:8000"], "fraud")   # or "dns://svc:8000"
    view.drift()      # the merged drift report of the stable version (the pipeline's trigger input)
    view.feedback()   # live accuracy per version, summed over replicas
    view.traffic()    # weights and per-version requests, errors, p99 (max over replicas)
"""

from loopserve.fleet.replicas import resolve_replicas
from loopserve.fleet.view import FleetView

__all__ = ["FleetView", "resolve_replicas"]
