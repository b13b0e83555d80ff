"""A synthetic card-fraud stream with a sensitive group attribute and scheduled drift.

Every row is a function of `(seed, global row index)` alone: rows are drawn in fixed blocks of
`BLOCK` rows, each block from its own generator seeded with `(seed, block number)`, and the drift
schedule is applied by row index afterwards. So `stream.batch(1000, 500)` gives exactly rows
1000..1499 of `stream.batch(0, 5000)`, on any machine, in any order of calls.

Features (the model input, float32, in this order):

    amount                  log-normal, median ~37; data drift: median x1.5, wider spread
    hour                    0..23, a day curve with a night trough
    account_age_days        exponential, older accounts for older customers
    distance_from_home_km   log-normal; data drift: farther (more travel / remote purchases)
    txn_count_24h           Poisson, younger customers transact more
    amount_to_avg_ratio     log-normal around 1 (this amount against the card's average)
    minutes_since_last_txn  exponential, mean ~5 h
    card_present            0 / 1
    failed_logins_24h       Poisson, mostly 0
    merchant_category       categorical, 20 codes (Zipf-like mix)
    country                 categorical, 50 codes (0 is the home country, ~70%); data drift: home
                            share falls to ~55% and codes 30..49 gain (a new market opens)
    device_type             categorical, 4 codes: 0 pos, 1 web, 2 ios, 3 android (mix by age band)

Sensitive attribute (NOT a model input; kept for fairness evaluation): `age_band`, 0 "18-34"
(35%), 1 "35-59" (45%), 2 "60+" (20%). It shapes account age, transaction counts and device mix
(so those are weak proxies of it), and older customers are targeted a little more often
(+0.25 on the fraud logit): base rates differ by group, as they do in real data.

Label `is_fraud` ~ Bernoulli(sigmoid(logit)) with the intercept calibrated to `fraud_rate`
(default 3%) on pre-drift data (the data drift alone, with the pattern unchanged, lifts the rate
to ~5.5%: larger amounts and more foreign transactions). Two fraud patterns ("concepts"):

    A (rows < concept_drift_at): large amounts against the card's average, night hours, far
      from home, new accounts, card not present, risky merchants {4, 9, 15}, abroad, failed logins.
    B (rows >= concept_drift_at): card testing and account takeover: SMALL amounts, many
      transactions in quick succession, android devices, merchants {1, 12, 18}, failed logins;
      night, distance and new accounts no longer signal fraud. A model fitted on A loses most
      of its ranking power on B.

Drift can be abrupt (the default) or ramp linearly over `drift_ramp` rows from its start row.

Labels come late, as chargebacks do: `label_delays(start, n, LabelDelay(median_s=5, sigma=0.6,
never=0.2))` gives each row's delay in seconds after its prediction, log-normal around the median,
and infinity for the share whose label never comes; like the rows, a function of the row index.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

BLOCK = 4096  # rows per independently seeded block; part of the stream's definition

NUMERIC = ("amount", "hour", "account_age_days", "distance_from_home_km", "txn_count_24h",
           "amount_to_avg_ratio", "minutes_since_last_txn", "card_present", "failed_logins_24h")
CATEGORICAL = {"merchant_category": 20, "country": 50, "device_type": 4}
FEATURES = NUMERIC + tuple(CATEGORICAL)
LABEL = "is_fraud"
GROUP = "age_band"
GROUP_NAMES = ("18-34", "35-59", "60+")
ROW = "row"

_GROUP_P = np.array([0.35, 0.45, 0.20])
_ACCOUNT_AGE_SCALE = np.array([400.0, 900.0, 1800.0])  # days, by age band
_TXN_RATE = np.array([4.0, 3.0, 2.0])  # per 24 h, by age band
_DEVICE_P = np.array([[0.20, 0.15, 0.35, 0.30],   # 18-34: pos, web, ios, android
                      [0.30, 0.25, 0.25, 0.20],   # 35-59
                      [0.35, 0.45, 0.10, 0.10]])  # 60+
_HOUR_P = np.array([1, 0.6, 0.4, 0.3, 0.3, 0.5, 1, 2, 3, 4, 5, 5, 6, 5, 5, 5, 5, 5, 6, 6, 5, 4, 3, 2], float)
_MERCHANT_P = 1.0 / np.arange(1, 21) ** 0.8
_COUNTRY_BEFORE = np.concatenate([[0.70], 0.30 * (w := 1.0 / np.arange(1, 50) ** 1.1) / w.sum()])
_COUNTRY_AFTER = _COUNTRY_BEFORE * np.where(np.arange(50) >= 30, 12.0, 1.0)
_COUNTRY_AFTER[0] = 0.0
_COUNTRY_AFTER = np.concatenate([[0.55], 0.45 * _COUNTRY_AFTER[1:] / _COUNTRY_AFTER[1:].sum()])
_RISKY_A, _RISKY_B = (4, 9, 15), (1, 12, 18)


def _cdf(p: np.ndarray) -> np.ndarray:
    c = np.cumsum(p / p.sum())
    c[-1] = 1.0
    return c


_HOUR_CDF, _MERCHANT_CDF = _cdf(_HOUR_P), _cdf(_MERCHANT_P)
_COUNTRY_CDF_BEFORE, _COUNTRY_CDF_AFTER = _cdf(_COUNTRY_BEFORE), _cdf(_COUNTRY_AFTER)
_DEVICE_CDF = np.stack([_cdf(p) for p in _DEVICE_P])


@dataclass
class FraudBatch:
    """Rows `start .. start + len - 1` of a stream. `features` is the model input."""

    start: int
    rows: np.ndarray            # int64 [n]: global row indices
    features: np.ndarray        # float32 [n, F], columns in `feature_names` order
    labels: np.ndarray          # int64 [n]: 1 fraud, 0 not
    groups: np.ndarray          # int64 [n]: age band code (not a model input)
    fraud_probability: np.ndarray  # float64 [n]: the latent model's P(fraud); the best any model can know
    feature_names: list[str] = field(default_factory=lambda: list(FEATURES))
    categorical: dict[str, int] = field(default_factory=lambda: dict(CATEGORICAL))
    group_names: list[str] = field(default_factory=lambda: list(GROUP_NAMES))

    def __len__(self) -> int:
        return len(self.labels)

    def column(self, name: str) -> np.ndarray:
        return self.features[:, self.feature_names.index(name)]

    def to_columns(self) -> dict[str, np.ndarray]:
        """One array per column: `row`, the features (categoricals as int32), the label, the group."""
        out: dict[str, np.ndarray] = {ROW: self.rows}
        for i, name in enumerate(self.feature_names):
            col = self.features[:, i]
            out[name] = col.astype(np.int32) if name in self.categorical else col
        out[LABEL] = self.labels.astype(np.int8)
        out[GROUP] = self.groups.astype(np.int8)
        return out

    def to_table(self):
        """The columns as a pyarrow Table (what `loopserve.data.snapshot` takes)."""
        import pyarrow as pa

        return pa.table(self.to_columns())


@dataclass(frozen=True)
class LabelDelay:
    """How late labels come: log-normal with this median and spread (sigma of the log; 0: every
    label exactly median_s late), and the share of rows whose label never comes."""

    median_s: float = 1.0
    sigma: float = 0.0
    never: float = 0.0

    def __post_init__(self):
        if self.median_s < 0 or self.sigma < 0 or not 0 <= self.never <= 1:
            raise ValueError(f"a label delay needs median_s >= 0, sigma >= 0 and never in [0, 1], got {self}")


class FraudStream:
    """The stream: `batch(start, n)` gives rows `start .. start + n - 1` (see the module doc).

    `data_drift_at` / `concept_drift_at`: first row of each drift (None: never); `drift_ramp`:
    rows over which each drift phases in linearly (0: abrupt).
    """

    feature_names = list(FEATURES)
    categorical = dict(CATEGORICAL)
    group_names = list(GROUP_NAMES)

    def __init__(self, seed: int = 0, data_drift_at: int | None = None, concept_drift_at: int | None = None,
                 drift_ramp: int = 0, fraud_rate: float = 0.03):
        if not 0.001 <= fraud_rate <= 0.5:
            raise ValueError(f"fraud_rate must be in [0.001, 0.5], got {fraud_rate}")
        for key, value in (("data_drift_at", data_drift_at), ("concept_drift_at", concept_drift_at)):
            if value is not None and value < 0:
                raise ValueError(f"{key} must be a row index >= 0 or None, got {value}")
        if drift_ramp < 0:
            raise ValueError(f"drift_ramp must be >= 0 rows, got {drift_ramp}")
        self.seed = int(seed)
        self.data_drift_at = data_drift_at
        self.concept_drift_at = concept_drift_at
        self.drift_ramp = int(drift_ramp)
        self.fraud_rate = float(fraud_rate)
        self._bias_a, self._bias_b = _intercepts(self.fraud_rate)

    def __repr__(self) -> str:
        return (f"FraudStream(seed={self.seed}, data_drift_at={self.data_drift_at}, "
                f"concept_drift_at={self.concept_drift_at}, drift_ramp={self.drift_ramp}, "
                f"fraud_rate={self.fraud_rate})")

    def schedule(self) -> str:
        """The drift schedule in words."""
        ramp = f" (ramping in over {self.drift_ramp:,} rows)" if self.drift_ramp else ""
        data = f"data drift from row {self.data_drift_at:,}{ramp}" if self.data_drift_at is not None \
            else "no data drift"
        concept = f"concept drift from row {self.concept_drift_at:,}{ramp}" if self.concept_drift_at is not None \
            else "no concept drift"
        return f"{data}; {concept}"

    def batch(self, start: int, n: int) -> FraudBatch:
        """Rows `start .. start + n - 1`."""
        if start < 0 or n < 0:
            raise ValueError(f"start and n must be >= 0, got start={start}, n={n}")
        first, last = start // BLOCK, (start + n - 1) // BLOCK if n else start // BLOCK - 1
        parts = [self._block(b) for b in range(first, last + 1)]
        raw = {k: np.concatenate([p[k] for p in parts])[start - first * BLOCK:][:n] if parts
               else np.empty(0) for k in _DRAWS}
        return self._assemble(start, n, raw)

    def label_delays(self, start: int, n: int, delay: LabelDelay) -> np.ndarray:
        """Seconds from each row's prediction to its label (inf: never labelled), rows
        `start .. start + n - 1`; drawn per block like the rows, apart from them."""
        first, last = start // BLOCK, (start + n - 1) // BLOCK
        u_never, z = (np.concatenate(parts)[start - first * BLOCK:][:n] if n else np.empty(0)
                      for parts in zip(*(self._delay_block(b) for b in range(first, last + 1))))
        delays = delay.median_s * np.exp(delay.sigma * z)
        return np.where(u_never < delay.never, np.inf, delays)

    # -- internals ------------------------------------------------------------------------

    @functools.lru_cache(maxsize=32)
    def _delay_block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, block, 1])  # a stream of its own: the rows stay as they were
        return rng.random(BLOCK), rng.standard_normal(BLOCK)

    def _weight(self, rows: np.ndarray, at: int | None) -> np.ndarray:
        """How far a drift has phased in at each row: 0 before, 1 after (linear over the ramp)."""
        if at is None:
            return np.zeros(len(rows))
        if self.drift_ramp == 0:
            return (rows >= at).astype(np.float64)
        return np.clip((rows - at + 1) / self.drift_ramp, 0.0, 1.0)

    @functools.lru_cache(maxsize=32)
    def _block(self, block: int) -> dict[str, np.ndarray]:
        return _draw(np.random.default_rng([self.seed, block]), BLOCK)

    def _assemble(self, start: int, n: int, r: dict[str, np.ndarray]) -> FraudBatch:
        rows = np.arange(start, start + n, dtype=np.int64)
        wd = self._weight(rows, self.data_drift_at)
        wc = self._weight(rows, self.concept_drift_at)
        drifted = r["u_drift"] < wd  # which rows use the drifted country mix
        group = np.searchsorted(_cdf(_GROUP_P), r["u_group"], side="right")
        amount = np.exp(3.6 + 0.4 * wd + (1.0 + 0.15 * wd) * r["z_amount"])
        hour = np.searchsorted(_HOUR_CDF, r["u_hour"], side="right").astype(np.float64)
        account_age = np.floor(_ACCOUNT_AGE_SCALE[group] * r["e_account"]) + 1.0
        distance = np.exp(1.5 + 0.5 * wd + 1.2 * r["z_distance"])
        txn_count = _poisson_from_uniform(_TXN_RATE[group], r["u_txn"])
        ratio = np.exp(0.5 * r["z_ratio"])
        minutes = np.round(300.0 * r["e_minutes"], 1)
        device = (r["u_device"][:, None] > _DEVICE_CDF[group]).sum(axis=1)
        card_present = (r["u_card"] < np.where(device == 0, 0.95, 0.15)).astype(np.float64)
        failed = _poisson_from_uniform(np.full(n, 0.15), r["u_failed"])
        merchant = np.searchsorted(_MERCHANT_CDF, r["u_merchant"], side="right")
        country = np.where(drifted, np.searchsorted(_COUNTRY_CDF_AFTER, r["u_country"], side="right"),
                           np.searchsorted(_COUNTRY_CDF_BEFORE, r["u_country"], side="right"))
        cols = dict(amount=amount, hour=hour, account_age_days=account_age, distance_from_home_km=distance,
                    txn_count_24h=txn_count, amount_to_avg_ratio=ratio, minutes_since_last_txn=minutes,
                    card_present=card_present, failed_logins_24h=failed, merchant_category=merchant,
                    country=country, device_type=device)
        concept_b = r["u_concept"] < wc
        logit = np.where(concept_b, _logit_b(cols) + self._bias_b, _logit_a(cols) + self._bias_a)
        logit = logit + 0.25 * (group == 2)
        p = 1.0 / (1.0 + np.exp(-logit))
        labels = (r["u_label"] < p).astype(np.int64)
        features = np.stack([np.asarray(cols[f], dtype=np.float32) for f in FEATURES], axis=1) if n \
            else np.zeros((0, len(FEATURES)), np.float32)
        return FraudBatch(start=start, rows=rows, features=features, labels=labels,
                          groups=group.astype(np.int64), fraud_probability=p)


# Every block draws these, in this order, whatever the schedule: drift only changes how they are used.
_DRAWS = ("u_group", "z_amount", "u_hour", "e_account", "z_distance", "u_txn", "z_ratio", "e_minutes", "u_device",
          "u_card", "u_failed", "u_merchant", "u_country", "u_drift", "u_concept", "u_label")


def _draw(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    out = {}
    for name in _DRAWS:
        if name.startswith("z_"):
            out[name] = rng.standard_normal(n)
        elif name.startswith("e_"):
            out[name] = rng.standard_exponential(n)
        else:
            out[name] = rng.random(n)
    return out


def _poisson_from_uniform(lam: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Poisson(lam) by inverting its CDF at u: one uniform per row, so rows stay independent of each other."""
    k = np.zeros(len(u))
    pmf = np.exp(-lam)
    cdf = pmf.copy()
    for i in range(1, 60):
        below = u >= cdf
        if not below.any():
            break
        k += below
        pmf = pmf * lam / i
        cdf = cdf + pmf
    return k


def _logit_a(c: dict[str, np.ndarray]) -> np.ndarray:
    night = (c["hour"] <= 5).astype(np.float64)
    return (0.7 * (np.log(c["amount"]) - 3.6) + 2.0 * np.log(c["amount_to_avg_ratio"]) + 1.4 * night
            + 0.8 * (np.log1p(c["distance_from_home_km"]) - 1.8) + 1.8 * (c["account_age_days"] < 60)
            + 1.0 * (1.0 - c["card_present"]) + 1.6 * np.isin(c["merchant_category"], _RISKY_A)
            + 0.6 * (c["country"] != 0) + 0.8 * c["failed_logins_24h"])


def _logit_b(c: dict[str, np.ndarray]) -> np.ndarray:
    return (-1.4 * (np.log(c["amount"]) - 3.6) + 0.45 * (c["txn_count_24h"] - 3.0)
            - 0.6 * (np.log1p(c["minutes_since_last_txn"]) - 5.0) + 1.8 * (c["device_type"] == 3)
            + 1.7 * np.isin(c["merchant_category"], _RISKY_B) + 1.1 * c["failed_logins_24h"])


@functools.lru_cache(maxsize=16)
def _intercepts(rate: float) -> tuple[float, float]:
    """Intercepts that make each concept's mean P(fraud) equal `rate` on pre-drift rows (fixed sample)."""
    stream = object.__new__(FraudStream)
    stream.seed, stream.data_drift_at, stream.concept_drift_at, stream.drift_ramp = 2**31 - 1, None, None, 0
    stream._bias_a = stream._bias_b = 0.0
    raw = _draw(np.random.default_rng([2**31 - 1, 0]), 50_000)
    cols_batch = stream._assemble(0, 50_000, raw)
    cols = {f: cols_batch.features[:, i].astype(np.float64) for i, f in enumerate(FEATURES)}
    extra = 0.25 * (cols_batch.groups == 2)
    return tuple(_solve_bias(logit + extra, rate) for logit in (_logit_a(cols), _logit_b(cols)))


def _solve_bias(logit: np.ndarray, rate: float) -> float:
    lo, hi = -30.0, 30.0
    for _ in range(80):  # bisection: mean sigmoid is monotone in the intercept
        mid = (lo + hi) / 2
        if np.mean(1.0 / (1.0 + np.exp(-(logit + mid)))) < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
