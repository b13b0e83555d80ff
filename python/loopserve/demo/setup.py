"""The closed-loop demo's files: the train template, v1 trained and registered as production,
the server config (serving registry://fraud@production with a canary alias) and the pipeline
config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MODEL = "fraud"


@dataclass(frozen=True)
class DemoSizes:
    """How big the demo is: the README's run, or the test's smaller one."""

    train_rows: int = 30_000
    holdout_rows: int = 10_000
    epochs: int = 4
    drift_at: int = 8_000  # stream row where data and concept drift start (after v1's rows)
    window_rows: int = 2_000  # drift windows
    retrain_min_rows: int = 8_000
    canary_min_requests: int = 400
    canary_min_labels: int = 400
    canary_weight: float = 30.0
    rows_per_s: float = 400.0
    label_delay_s: float = 1.0  # the median delay of a label after its prediction
    label_delay_sigma: float = 0.0  # log-normal spread of the delays (0: all label_delay_s)
    labels_never: float = 0.0  # the share of rows whose label never comes
    max_seconds: float = 150.0  # give up if v2 is not promoted by then
    # Fraud is rarer in life (~3%); at 10% a few thousand labelled rows hold enough positives to
    # train and gate a model on, so the demo closes its loop in a minute or two.
    fraud_rate: float = 0.10
    max_p99_latency_ms: float = 20.0  # the candidate's gate, at batch 1
    canary_max_p99_ratio: float = 3.0  # the canary's p99 against production's, on live traffic


def write_train_template(workdir: Path, sizes: DemoSizes, seed: int, store: str = "store") -> Path:
    """Trains on the stream's first rows; the pipeline swaps data and holdout for live labels.
    `store`: a directory (relative to `workdir`) or a postgresql:// URL."""
    path = workdir / "train_fraud.yaml"
    path.write_text(f"""\
# The fraud model's training: v1 from the stream's first rows, later versions from live labels.
data:
  generator: {{dataset: fraud, seed: {seed}, start: 0, rows: {sizes.train_rows}, fraud_rate: {sizes.fraud_rate}}}
  label: is_fraud
  group: age_band
holdout:
  generator: {{dataset: fraud, seed: {seed}, start: {sizes.train_rows}, rows: {sizes.holdout_rows}, fraud_rate: {sizes.fraud_rate}}}
model:
  hidden: [64, 32]
  log_features: [amount, account_age_days, distance_from_home_km, minutes_since_last_txn]
epochs: {sizes.epochs}
batch_size: 256
lr: 0.003
pos_weight: 2.0
seed: {seed}
output: {{dir: models, name: {MODEL}, version: next, max_batch_size: 64, max_queue_delay_us: 200}}
gates:
  min_auc: 0.7
  decision_threshold: 0.2
  # The new fraud pattern (many quick small payments from phones) is far more common among the
  # young: base rates differ by group, so parity of positive rates is held loosely and equal
  # opportunity (recall per group) tightly.
  max_demographic_parity_difference: 0.3
  max_equal_opportunity_difference: 0.25
  # ... and no worse than production's on the same rows. When production itself fails a ceiling
  # or floor (a new pattern it cannot see), a candidate that does better on each of those passes.
  fairness_vs_production: {{equal_opportunity_difference: 0.05}}
  when_production_fails: promote_if_better
  max_p99_latency_ms: {sizes.max_p99_latency_ms:g}
tracking: {{enabled: true, experiment: {MODEL}}}
registry: {{enabled: true, alias: production}}
store: '{store}'
""")
    return path


def train_v1(template: Path):
    from loopserve.training import load_train_config, train

    result = train(load_train_config(template), quiet=True)
    if not result.published:
        raise RuntimeError(f"v1 failed its gates: {result.gate_failures}")
    return result


@dataclass(frozen=True)
class Replica:
    """One server of the demo: the single server, or one replica of a fleet that shares the
    traffic (each closes its windows on its share of the rows, so the fleet's merged windows are
    as large as the single server's)."""

    port: int
    config: str = "server.yaml"
    spill_dir: str = "feedback"  # relative to the working directory
    replicas: int = 1  # how many share the traffic
    workers: str = "auto"


def write_server_config(workdir: Path, sizes: DemoSizes, port: int, store: str = "store",
                        replica: Replica | None = None) -> Path:
    replica = replica or Replica(port)
    path = workdir / replica.config
    path.write_text(f"""\
# The demo server: the fraud model from the registry, following its aliases.
models:
  - name: {MODEL}
    source: registry://{MODEL}@production
    canary_alias: canary
    canary_weight: {sizes.canary_weight}
    drift: {{window_rows: {-(-sizes.window_rows // replica.replicas)}, window_seconds: 0}}
    feedback: {{spill_dir: {replica.spill_dir}, threshold: 0.2, window_labels: {-(-500 // replica.replicas)}, horizon_s: 600}}
store: '{store}'
http: {{host: 127.0.0.1, port: {replica.port}}}
workers: {replica.workers}
repository_poll_s: 0.5
log_level: info
""")
    return path


def write_pipeline_config(workdir: Path, sizes: DemoSizes, port: int, store: str = "store",
                          replicas: list[str] | None = None, feedback: str = "feedback") -> Path:
    """Watches the server on `port`, or the `replicas` (base URLs) as one fleet: their drift
    and accuracy merged, their spill directories (`feedback`: a glob for them all) read together."""
    path = workdir / "pipeline.yaml"
    watched = f"replicas: [{', '.join(replicas)}]" if replicas else f"server: http://127.0.0.1:{port}"
    path.write_text(f"""\
# Continuous training for the fraud model: retrain when drift holds for 2 windows.
model: {MODEL}
{watched}
store: '{store}'
train: train_fraud.yaml
retrain_data: {{feedback_dir: '{feedback}', min_rows: {sizes.retrain_min_rows}, max_rows: 20000, holdout_fraction: 0.3}}
triggers: {{drift_windows: 2, cooldown_s: 30}}
# The new market's amounts are larger (median x1.5, a wider spread): in the live rows their tail
# reaches 3.3 spans of v1's amounts past v1's largest. That is drift to let through, not a broken
# feed (an amount x1e6 is still stopped, by its range and its mean).
validation: {{range_margin: 5.0}}
canary:
  window_s: 60
  min_requests: {sizes.canary_min_requests}
  min_labels: {sizes.canary_min_labels}
  accuracy_margin: 0.01
  max_p99_ratio: {sizes.canary_max_p99_ratio:g}
poll_s: 1.0
""")
    return path


def stop_processes(*procs) -> None:
    """Stops the demo's server and pipeline processes that still run (SIGTERM, then SIGKILL after
    a minute); None stands for one that never started."""
    import subprocess

    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
