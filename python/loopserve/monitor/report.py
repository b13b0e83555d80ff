"""The drift report's schema: what `GET /v2/models/{m}/drift` returns, as msgspec Structs."""

from __future__ import annotations

import msgspec


class FeatureDrift(msgspec.Struct, omit_defaults=True):
    """One feature (or model output) in one window, against the reference profile."""

    name: str
    kind: str  # "numeric" or "categorical"
    role: str  # "input" or "output" (prediction drift)
    rows: int
    missing_rate: float
    reference_missing_rate: float
    missing_pvalue: float
    psi: float
    js_distance: float
    chi2: float
    chi2_pvalue: float
    chi2_df: int
    drifted: bool
    reasons: list[str] = []
    below_floor: list[str] = []  # significant tests whose effect is under the policy's floor
    ks: float | None = None
    # The exact KS (all rows) lies within ks +- ks_margin: from every value of the window, the
    # reference grid's band (always); from a sample, the rank errors and the sample's sampling
    # error (with probability >= 97%). ks_low: the larger of ks - margin and the exact KS at the
    # bin edges.
    ks_margin: float | None = None
    ks_low: float | None = None
    ks_pvalue: float | None = None
    ks_sample: int | None = None  # the window's values KS and W1 were computed from
    distribution_from: str | None = None  # "every value" of the window, or "a sample" of it
    wasserstein: float | None = None
    # [low, high]: the exact W1 lies within (always from every value; >= 97% from a sample)
    wasserstein_bounds: list[float] | None = None
    mean: float | None = None
    reference_mean: float | None = None
    std: float | None = None
    reference_std: float | None = None


class WindowDrift(msgspec.Struct):
    start: float  # unix seconds
    end: float
    closed: bool
    rows: int
    verdict: str  # "drift", "no drift", "significant, below the floor" or "insufficient data"
    drifted_features: list[str]
    tests: int  # tests run in this window (the multiple-testing correction divides alpha by it)
    alpha_per_test: float
    features: list[FeatureDrift]
    below_floor_features: list[str] = []  # significant, but every effect under its floor


class MonitorCounters(msgspec.Struct):
    rows_seen: int
    rows_skipped: int  # the monitor fell behind and sampled: these rows were not looked at
    batches_skipped: int
    rows_rejected: int
    windows_closed: int
    queued_rows: int


class DriftReport(msgspec.Struct):
    model: str
    version: str
    reference_rows: int
    alert: bool  # the latest closed window's verdict is "drift"
    monitor: MonitorCounters
    windows: list[WindowDrift]  # oldest first; the last one is the open window when present
    # The version's live accuracy from ground-truth feedback (a loopserve.monitor.live_metrics
    # VersionFeedback), when labels have come: drift says the inputs moved, this says whether it hurts.
    live: object | None = None
