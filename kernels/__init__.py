"""Triton GPU kernels: drift accumulators (bin counts, moments, category counts) for a batch on the GPU.

`import loopserve.kernels` is cheap and never fails: torch and triton are imported on first use of
a kernel function. `available()` says whether the kernels can run here (triton importable, and a
CUDA device or `TRITON_INTERPRET=1`, which runs them on the CPU).
"""

from __future__ import annotations

import importlib.util
import os

__all__ = [
    "available", "drift_update_", "bin_counts_", "moments", "category_counts_", "merge_moments",
    "bin_counts_reference", "moments_reference", "category_counts_reference",
]

_FROM_DRIFT = {"drift_update_", "bin_counts_", "moments", "category_counts_"}
_FROM_REFERENCE = {"merge_moments", "bin_counts_reference", "moments_reference", "category_counts_reference"}


def available() -> bool:
    """True when the Triton kernels can run: triton imports, and there is a CUDA device or the
    interpreter is on (`TRITON_INTERPRET=1`)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # a broken install is "not available", never an import error
        return False
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return True
    import torch

    return torch.cuda.is_available()


def __getattr__(name: str):
    if name in _FROM_DRIFT:
        from loopserve.kernels import drift

        return getattr(drift, name)
    if name in _FROM_REFERENCE:
        from loopserve.kernels import reference

        return getattr(reference, name)
    raise AttributeError(f"module 'loopserve.kernels' has no attribute {name!r}")
