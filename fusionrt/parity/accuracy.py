"""Accuracy per precision and question kind, and per-question error against fp32 PyTorch, on held-out scenes.

The run's one :class:`fusionrt.parity.heldout.Heldout` set (regions through the bundle's fp32 region
encoder) and its PyTorch fp32 reference are reused; every precision's graph runs on the same batches. Per
question it keeps the max abs error of the logits and of ``hidden`` (real tokens only), the distributions the
report plots.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fusionrt.bundle.manifest import Bundle
from fusionrt.data.questions import QUESTION_KINDS
from fusionrt.parity.heldout import BATCH, Heldout
from fusionrt.runtime.session import Session


def _outputs(session: Session, batches: list[dict[str, np.ndarray]]) -> tuple[list[np.ndarray], np.ndarray]:
    hidden, logits = [], []
    for feed in batches:
        out = session.run(feed)
        hidden.append(out["hidden"])
        logits.append(out["logits"])
    return hidden, np.concatenate(logits)


def _per_question_hidden_error(ref: list[np.ndarray], cand: list[np.ndarray],
                               batches: list[dict[str, np.ndarray]]) -> np.ndarray:
    errors = []
    for r, c, feed in zip(ref, cand, batches, strict=True):
        diff = np.abs(r.astype(np.float64) - c.astype(np.float64)) * feed["text_mask"][:, :, None]
        errors.append(diff.reshape(len(diff), -1).max(axis=1))
    return np.concatenate(errors)


def accuracy_by_kind(bundle: Bundle, precisions: Sequence[str], scenes: int = 200, backend: str = "onnxruntime",
                     torch_options: dict[str, Any] | None = None, heldout: Heldout | None = None) -> dict[str, Any]:
    """Accuracy overall and per kind of fp32 PyTorch and of each precision on ``backend``; per-question errors.

    ``heldout``: the run's shared held-out set and reference (then ``scenes`` and ``torch_options`` are its own)."""
    if heldout is None:
        heldout = Heldout(bundle, scenes, BATCH, torch_options=torch_options)
    qa, batches = heldout.qa, heldout.batches
    kinds = [QUESTION_KINDS[k] for k in qa.kind_index]

    def summary(pred: np.ndarray) -> dict[str, Any]:
        correct = pred == qa.answer_index
        per_kind = {kind: float(correct[[k == kind for k in kinds]].mean()) for kind in QUESTION_KINDS
                    if kind in kinds}
        return {"overall": float(correct.mean()), "per_kind": per_kind}

    ref_hidden = [out["hidden"] for out in heldout.reference_outputs]
    ref_logits = heldout.reference("logits")
    ref_pred = ref_logits.argmax(axis=1)
    results: dict[str, Any] = {"torch fp32": {**summary(ref_pred), "agreement": 1.0}}
    errors: dict[str, dict[str, list[float]]] = {}
    for precision in precisions:
        with Session(bundle, backend, "fusion", precision) as session:
            hidden, logits = _outputs(session, batches)
        pred = logits.argmax(axis=1)
        label = f"{backend} {precision}"
        results[label] = {**summary(pred), "agreement": float((pred == ref_pred).mean())}
        errors[label] = {
            "logits_max_abs": np.abs(logits.astype(np.float64) - ref_logits).max(axis=1).tolist(),
            "hidden_max_abs": _per_question_hidden_error(ref_hidden, hidden, batches).tolist(),
        }
    counts = {kind: kinds.count(kind) for kind in QUESTION_KINDS if kind in kinds}
    return {"scenes": heldout.scenes, "questions": len(qa), "questions_per_kind": counts, "accuracy": results,
            "errors": errors}
