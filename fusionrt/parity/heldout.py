"""Held-out scenes and the fp32 PyTorch reference on them, built once and shared by every accuracy measurement.

Held-out questions are pre-processed once (render, detect, fp32 region encoder of the bundle,
tokenizer) into batches; the reference logits come from the PyTorch fusion module the bundle was
exported from. Every candidate graph then runs on the same batches, so candidates (precisions,
calibration methods, exclusion sets) are compared on identical inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.bundle.manifest import Bundle
from fusionrt.parity.budgets import Measurement
from fusionrt.parity.scenes import encode_scene_regions, heldout_questions, question_batches
from fusionrt.progress import SILENT, Progress
from fusionrt.runtime.backends.onnxrt import session_from_onnx
from fusionrt.runtime.session import Session

DEFAULT_HELDOUT_SCENES = 500


class HeldoutEvaluator:
    """Held-out batches and fp32 PyTorch reference predictions, built once; :meth:`measure` runs a graph."""

    def __init__(self, bundle: Bundle, scenes: int = DEFAULT_HELDOUT_SCENES, batch: int = 64,
                 progress: Progress = SILENT, reference: Any = None) -> None:
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
