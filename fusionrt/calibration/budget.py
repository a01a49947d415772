"""Accuracy budgets: a quantized graph against the fp32 PyTorch model on held-out scenes.

Held-out questions are pre-processed once (render, detect, fp32 region encoder of the bundle,
tokenizer) into batches; the reference logits come from the PyTorch fusion module the bundle was
exported from. Every candidate graph then runs on the same batches, so candidates (precisions,
calibration methods, exclusion sets) are compared on identical inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.progress import SILENT, Progress
from fusionrt.runtime.bundle import Bundle

DEFAULT_HELDOUT_SCENES = 500


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


class HeldoutEvaluator:
    """Held-out batches and fp32 PyTorch reference predictions, built once; :meth:`measure` runs a graph."""

    def __init__(self, bundle: Bundle, scenes: int = DEFAULT_HELDOUT_SCENES, batch: int = 64,
                 progress: Progress = SILENT, reference: Any = None) -> None:
        from fusionrt.parity.scenes import encode_scene_regions, heldout_questions, question_batches
        from fusionrt.runtime.session import Session

        self.scenes = scenes
        qa = heldout_questions(bundle, scenes, progress=progress)
        visual, visual_mask = encode_scene_regions(bundle, qa)
        self.batches = question_batches(bundle, qa, visual, visual_mask, batch)
        self.answers = qa.answer_index
        progress.note(f"fp32 PyTorch reference on {len(qa)} held-out questions")
        ref = reference if reference is not None else Session(bundle, "torch", "fusion")
        self.reference_logits = self._logits(ref.run)
        self.reference_pred = self.reference_logits.argmax(axis=1)
        self.reference_accuracy = float((self.reference_pred == self.answers).mean())

    def _logits(self, run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]) -> np.ndarray:
        return np.concatenate([run(feed)["logits"] for feed in self.batches])

    def measure_path(self, onnx_path: str | Path, threads: int | None = None) -> Measurement:
        """Accuracy and agreement of the fusion graph at ``onnx_path`` on onnxruntime (CPU)."""
        from fusionrt.runtime.backends.onnxrt import session_from_onnx

        session = session_from_onnx(onnx_path, providers=["CPUExecutionProvider"], threads=threads)
        names = [o.name for o in session.get_outputs()]
        return self.measure(lambda feed: dict(zip(names, session.run(names, feed), strict=True)))

    def measure(self, run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]) -> Measurement:
        logits = self._logits(run)
        pred = logits.argmax(axis=1)
        error = np.abs(logits.astype(np.float64) - self.reference_logits)
        return Measurement(questions=len(self.answers), reference_accuracy=self.reference_accuracy,
                           accuracy=float((pred == self.answers).mean()),
                           agreement=float((pred == self.reference_pred).mean()),
                           # NaN logits (a broken graph) must never look good
                           logits_mean_abs=float(error.mean()) if np.isfinite(error).all() else float("inf"))
