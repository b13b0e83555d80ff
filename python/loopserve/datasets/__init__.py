"""Demo datasets shipped with loopserve: deterministic, drifting streams for the closed loop.

    from loopserve.datasets import FraudStream
    stream = FraudStream(seed=0, data_drift_at=200_000, concept_drift_at=300_000)
    batch = stream.batch(0, 50_000)      # .features [n, 12] float32, .labels, .groups, .to_table()
    delays = stream.label_delays(0, 50_000, LabelDelay(median_s=5, sigma=0.6, never=0.2))  # s; inf: never
"""

from loopserve.datasets.fraud import (CATEGORICAL, FEATURES, GROUP, GROUP_NAMES, LABEL, ROW, FraudBatch,
                                      FraudStream, LabelDelay)

__all__ = ["CATEGORICAL", "FEATURES", "GROUP", "GROUP_NAMES", "LABEL", "ROW", "FraudBatch", "FraudStream", "LabelDelay"]
