"""Accuracy budgets per precision and what a candidate measured against them on held-out data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Budget:
    """Largest accuracy drop (percentage points) and smallest argmax agreement with fp32 PyTorch."""

    max_drop_points: float
    min_agreement: float

    def to_dict(self) -> dict[str, float]:
        return {"max_drop_points": self.max_drop_points, "min_agreement": self.min_agreement}


BUDGETS: dict[str, Budget] = {
    "fp16": Budget(max_drop_points=0.2, min_agreement=0.995),
    "int8": Budget(max_drop_points=1.0, min_agreement=0.98),
    "int8-cpu": Budget(max_drop_points=1.0, min_agreement=0.98),
}


@dataclass
class Measurement:
    """A candidate's task accuracy and agreement against the reference's, on the same questions."""

    questions: int
    reference_accuracy: float
    accuracy: float
    agreement: float
    # Mean |logit - reference logit|: finer than argmax agreement, used to break ties between candidates.
    logits_mean_abs: float = 0.0

    @property
    def drop_points(self) -> float:
        return 100.0 * (self.reference_accuracy - self.accuracy)

    def failures(self, budget: Budget) -> list[str]:
        out = []
        if self.drop_points > budget.max_drop_points:
            out.append(f"accuracy drop {self.drop_points:.3f} points > {budget.max_drop_points:g}")
        if self.agreement < budget.min_agreement:
            out.append(f"argmax agreement {self.agreement:.4f} < {budget.min_agreement:g}")
        return out

    def to_dict(self, budget: Budget | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"questions": self.questions, "reference_accuracy": self.reference_accuracy,
                               "accuracy": self.accuracy, "drop_points": self.drop_points,
                               "agreement": self.agreement, "logits_mean_abs": self.logits_mean_abs}
        if budget is not None:
            out["budget"] = budget.to_dict()
            out["failures"] = self.failures(budget)
            out["passed"] = not out["failures"]
        return out
