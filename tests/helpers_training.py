"""A tiny real training entrypoint for the reproduce tests: linear regression by gradient descent.

Deterministic given its params (numpy with a fixed seed); `jitter=True` adds noise from the OS,
so a reproduction of it must disagree.
"""

from __future__ import annotations

import os

import numpy as np

ENTRYPOINT = "helpers_training:train"


def train(params: dict, data_snapshot: str | None, run) -> dict:
    rng = np.random.default_rng(params["seed"])
    x = rng.normal(size=(256, 4))
    w_true = np.array([1.5, -2.0, 0.5, 3.0])
    y = x @ w_true + 0.1 * rng.normal(size=256)
    if params.get("jitter"):
        y = y + np.frombuffer(os.urandom(256 * 8), dtype=np.uint64) / 2.0**64
    x_train, y_train, x_val, y_val = x[:192], y[:192], x[192:], y[192:]
    w = np.zeros(4)
    for epoch in range(params["epochs"]):
        grad = 2 * x_train.T @ (x_train @ w - y_train) / len(y_train)
        w -= params["lr"] * grad
        run.log_metric("train_mse", float(np.mean((x_train @ w - y_train) ** 2)), step=epoch)
    run.set_tag("data_seen", data_snapshot or "none")
    return {"val_mse": float(np.mean((x_val @ w - y_val) ** 2))}
