"""Accuracy budgets per precision and what a candidate measured against them on held-out data.

The scene world's budgets (``BUDGETS``) are in task accuracy and argmax agreement. A user's model
measured on its own held-out feeds (task "custom") gets ``CUSTOM_BUDGETS``: with labels, accuracy
points too; without, agreement with the original only (top-1 agreement of the logits-like output,
cosine of every output). Whichever budget admitted a precision is recorded in the manifest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Budget:
    """Largest accuracy drop (percentage points), smallest argmax agreement and smallest cosine of every output
    against fp32 PyTorch; ``None``: not gated (no labels, no logits-like output)."""

    max_drop_points: float | None
    min_agreement: float | None
    min_cosine: float | None = None

    def to_dict(self) -> dict[str, float]:
        return {k: v for k, v in (("max_drop_points", self.max_drop_points), ("min_agreement", self.min_agreement),
                                  ("min_cosine", self.min_cosine)) if v is not None}

    def without(self, *gates: str) -> Budget:
        """This budget with ``gates`` not checked (what the held-out data cannot measure)."""
        return Budget(**{k: (None if k in gates else v) for k, v in vars(self).items()})


BUDGETS: dict[str, Budget] = {
    "fp16": Budget(max_drop_points=0.2, min_agreement=0.995),
    "int8": Budget(max_drop_points=1.0, min_agreement=0.98),
    "int8-cpu": Budget(max_drop_points=1.0, min_agreement=0.98),
}
# A user's held-out feeds are usually hundreds of rows, not thousands of questions: one flipped row of 400 is
# 0.25 points, so the drop budget is wider than the scene world's; cosine floors measured on the example model
# (examples/hf_cross_attention.py; benchmarks/RESULTS.md "Your own model").
CUSTOM_BUDGETS: dict[str, Budget] = {
    "fp16": Budget(max_drop_points=0.5, min_agreement=0.99, min_cosine=0.999),
    "int8": Budget(max_drop_points=2.0, min_agreement=0.95, min_cosine=0.98),
    "int8-cpu": Budget(max_drop_points=2.0, min_agreement=0.95, min_cosine=0.98),
}


@dataclass
class Measurement:
    """A candidate's task accuracy, agreement and per-output cosine against the reference's, on the same rows.

    ``reference_accuracy``/``accuracy`` are ``None`` without labels, ``agreement`` without a logits-like output."""

    questions: int
    reference_accuracy: float | None
    accuracy: float | None
    agreement: float | None
    # Mean |logit - reference logit|: finer than argmax agreement, used to break ties between candidates.
    logits_mean_abs: float = 0.0
    cosine: dict[str, float] = field(default_factory=dict)

    @property
    def drop_points(self) -> float | None:
        if self.reference_accuracy is None or self.accuracy is None:
            return None
        return 100.0 * (self.reference_accuracy - self.accuracy)

    @property
    def min_cosine(self) -> float:
        return min(self.cosine.values(), default=1.0)

    def failures(self, budget: Budget) -> list[str]:
        out = []
        drop = self.drop_points
        if budget.max_drop_points is not None and drop is not None and drop > budget.max_drop_points:
            out.append(f"accuracy drop {drop:.3f} points > {budget.max_drop_points:g}")
        if budget.min_agreement is not None and self.agreement is not None and self.agreement < budget.min_agreement:
            out.append(f"argmax agreement {self.agreement:.4f} < {budget.min_agreement:g}")
        if budget.min_cosine is not None:
            out += [f"cosine of {name} {value:.6f} < {budget.min_cosine:g}" for name, value in self.cosine.items()
                    if not (math.isfinite(value) and value >= budget.min_cosine)]
        return out

    def to_dict(self, budget: Budget | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"questions": self.questions, "reference_accuracy": self.reference_accuracy,
                               "accuracy": self.accuracy, "drop_points": self.drop_points,
                               "agreement": self.agreement, "logits_mean_abs": self.logits_mean_abs}
        if self.cosine:
            out["cosine"] = dict(self.cosine)
        if budget is not None:
            out["budget"] = budget.to_dict()
            out["failures"] = self.failures(budget)
            out["passed"] = not out["failures"]
        return out


def measured_text(h: dict[str, Any]) -> str:
    """One line of what a held-out measurement (:meth:`Measurement.to_dict`) found: accuracy only with labels,
    agreement only with a logits-like output, cosine when measured."""
    if "text" in h:  # a measurement that words itself (a match bundle's: fusionrt.parity.match)
        return h["text"]
    parts = []
    if h.get("accuracy") is not None:
        parts.append(f"accuracy {100 * h['accuracy']:.2f}% (fp32 PyTorch {100 * h['reference_accuracy']:.2f}%, "
                     f"drop {h['drop_points']:+.3f} points)")
    if h.get("agreement") is not None:
        parts.append(f"agreement {100 * h['agreement']:.2f}%")
    if h.get("cosine"):
        parts.append("cosine " + ", ".join(f"{name} {value:.6f}" for name, value in h["cosine"].items()))
    return ", ".join(parts) + f" on {h.get('questions', '?')} held-out rows"
