"""Error metrics between a reference and a candidate output (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np

# Denominator floor of the relative error: values this close to zero count as absolute error.
REL_FLOOR = 1e-6


def array_metrics(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """``max_abs``, ``max_rel``, ``mean_abs`` and ``cosine`` of ``candidate`` against ``reference``.

    Shapes must match and both must be finite for the numbers to mean anything: a shape mismatch
    or a non-finite value is reported in ``problem`` and the errors are set to infinity.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    problem = None
    if ref.shape != cand.shape:
        problem = f"shape {list(cand.shape)} instead of {list(ref.shape)}"
    elif not (np.isfinite(ref).all() and np.isfinite(cand).all()):
        problem = (f"non-finite values: {int((~np.isfinite(ref)).sum())} in reference, "
                   f"{int((~np.isfinite(cand)).sum())} in candidate")
    if problem is not None:
        return {"max_abs": float("inf"), "max_rel": float("inf"), "mean_abs": float("inf"), "cosine": 0.0,
                "problem": problem}
    if ref.size == 0:
        return {"max_abs": 0.0, "max_rel": 0.0, "mean_abs": 0.0, "cosine": 1.0, "problem": None}
    diff = np.abs(ref - cand)
    norms = float(np.linalg.norm(ref)) * float(np.linalg.norm(cand))
    # Two all-zero outputs (a fully masked row's hidden state) agree perfectly.
    cosine = float(np.dot(ref.ravel(), cand.ravel()) / norms) if norms else float(not diff.any())
    return {
        "max_abs": float(diff.max()),
        "max_rel": float((diff / np.maximum(np.abs(ref), REL_FLOOR)).max()),
        "mean_abs": float(diff.mean()),
        "cosine": cosine,
        "problem": None,
    }


def worst(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """The worst of several points: largest errors, smallest cosine, first problem."""
    if not metrics:
        return {"max_abs": 0.0, "max_rel": 0.0, "mean_abs": 0.0, "cosine": 1.0, "problem": None}
    return {
        "max_abs": max(m["max_abs"] for m in metrics),
        "max_rel": max(m["max_rel"] for m in metrics),
        "mean_abs": max(m["mean_abs"] for m in metrics),
        "cosine": min(m["cosine"] for m in metrics),
        "problem": next((m["problem"] for m in metrics if m["problem"]), None),
    }
