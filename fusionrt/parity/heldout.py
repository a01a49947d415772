"""One held-out set and one fp32 PyTorch reference per run, shared by every accuracy measurement.

:class:`Heldout` pre-processes held-out questions once (render, detect, fp32 region encoder of the bundle,
tokenizer) into fusion batches, and runs the PyTorch fusion module the bundle was exported from on them once.
The accuracy budgets (:class:`HeldoutEvaluator`, used by fp16/int8 quantization and ``fusionrt tune``), the
accuracy tables (:func:`fusionrt.parity.accuracy.accuracy_by_kind`) and the parity stage all read the same
object, so candidates (precisions, calibration methods, exclusion sets) are compared on identical inputs and
the reference is computed once. :class:`MemoizedRuns` lets parity reuse the reference side's outputs across
candidates compared on the same feeds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.bundle.manifest import Bundle
from fusionrt.bundle.spec import FUSION
from fusionrt.data.dataset import QASet
from fusionrt.parity.budgets import Measurement
from fusionrt.parity.compare import Runs
from fusionrt.parity.scenes import encode_scene_regions, heldout_questions, question_batches
from fusionrt.progress import SILENT, Progress
from fusionrt.runtime.backends.onnxrt import session_from_onnx
from fusionrt.runtime.session import Session

DEFAULT_HELDOUT_SCENES = 500
BATCH = 64

Feed = dict[str, np.ndarray]


class MemoizedRuns:
    """A runner that computes each distinct feed once: the reference side of several comparisons."""

    def __init__(self, runner: Runs) -> None:
        self.runner = runner
        self._outputs: dict[str, dict[str, np.ndarray]] = {}
        self.calls = 0  # how many feeds really ran (the rest came from memory)

    @staticmethod
    def key(feed: Mapping[str, np.ndarray]) -> str:
        digest = hashlib.sha256()
        for name in sorted(feed):
            value = np.ascontiguousarray(feed[name])
            digest.update(f"{name}|{value.dtype}|{value.shape}|".encode())
            digest.update(value.tobytes())
        return digest.hexdigest()

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        key = self.key(feed)
        if key not in self._outputs:
            self.calls += 1
            self._outputs[key] = self.runner.run(feed)
        return self._outputs[key]

    def __getattr__(self, name: str) -> Any:  # describe(), close() ... of the wrapped runner
        return getattr(self.runner, name)


class Heldout:
    """Held-out questions of a bundle's scene world, their fusion batches and the fp32 PyTorch reference on them.

    ``reference``: the fusion runner to take as reference (default: ``Session(bundle, "torch", "fusion",
    **torch_options)``); it runs once, on first use of :attr:`reference_outputs`.
    """

    def __init__(self, bundle: Bundle, scenes: int = DEFAULT_HELDOUT_SCENES, batch: int = BATCH,
                 progress: Progress = SILENT, reference: Runs | None = None,
                 torch_options: Mapping[str, Any] | None = None) -> None:
        qa = heldout_questions(bundle, scenes, progress=progress)
        self._setup(bundle, scenes, qa, *encode_scene_regions(bundle, qa), batch, progress, reference,
                    dict(torch_options or {}))

    def _setup(self, bundle: Bundle, scenes: int, qa: QASet, visual: np.ndarray, visual_mask: np.ndarray,
               batch: int, progress: Progress, reference: Runs | None, torch_options: dict[str, Any]) -> None:
        self.bundle = bundle
        self.scenes = scenes
        self.qa = qa
        self._visual, self._visual_mask, self._batch = visual, visual_mask, batch
        self.batches: list[Feed] = question_batches(bundle, qa, visual, visual_mask, batch)
        self.labels = qa.answer_index
        self._reference = reference
        self._torch_options = torch_options
        self._reference_outputs: list[dict[str, np.ndarray]] | None = None
        self._progress = progress

    def subset(self, scenes: int) -> Heldout:
        """The first ``scenes`` scenes as a held-out set of their own, sharing this one's pre-processing and
        reference runner (a :class:`MemoizedRuns` reference then recomputes only the last, partial batch)."""
        if scenes >= self.scenes:
            return self
        view = Heldout.__new__(Heldout)
        view._setup(self.bundle, scenes, self.qa.first_scenes(scenes), self._visual[:scenes],
                    self._visual_mask[:scenes], self._batch, self._progress, self._reference, self._torch_options)
        return view

    @property
    def reference_outputs(self) -> list[dict[str, np.ndarray]]:
        """The reference's outputs on each batch, computed on first use."""
        if self._reference_outputs is None:
            self._progress.note(f"fp32 PyTorch reference on {len(self.labels)} held-out questions")
            if self._reference is not None:
                self._reference_outputs = [self._reference.run(feed) for feed in self.batches]
            else:
                with Session(self.bundle, "torch", FUSION, **self._torch_options) as reference:
                    self._reference_outputs = [reference.run(feed) for feed in self.batches]
        return self._reference_outputs

    def reference(self, output: str) -> np.ndarray:
        """One reference output over every question, batches concatenated (``logits`` [Q, A])."""
        return np.concatenate([out[output] for out in self.reference_outputs])

    def scene_questions(self, scenes: int) -> QASet:
        """The questions of the first ``scenes`` held-out scenes: the same scenes parity compares on."""
        if scenes <= self.scenes:
            return self.qa.first_scenes(scenes)
        return heldout_questions(self.bundle, scenes, progress=self._progress)


class HeldoutEvaluator:
    """Accuracy and agreement of a candidate fusion graph against the fp32 PyTorch reference on :class:`Heldout`.

    Pass ``heldout`` to share one held-out set and reference between evaluators and stages; otherwise one is
    built from ``bundle``, ``scenes``, ``batch``, ``progress`` and ``reference``.
    """

    def __init__(self, bundle: Bundle, scenes: int = DEFAULT_HELDOUT_SCENES, batch: int = BATCH,
                 progress: Progress = SILENT, reference: Any = None, heldout: Heldout | None = None) -> None:
        self.heldout = heldout if heldout is not None else Heldout(bundle, scenes, batch, progress, reference)
        self.scenes = self.heldout.scenes
        self.batches = self.heldout.batches
        self.answers = self.heldout.labels
        self.reference_logits = self.heldout.reference("logits")
        self.reference_pred = self.reference_logits.argmax(axis=1)
        self.reference_accuracy = float((self.reference_pred == self.answers).mean())

    def _logits(self, run: Callable[[Feed], dict[str, np.ndarray]]) -> np.ndarray:
        return np.concatenate([run(feed)["logits"] for feed in self.batches])

    def measure_path(self, onnx_path: str | Path, threads: int | None = None) -> Measurement:
        """Accuracy and agreement of the fusion graph at ``onnx_path`` on onnxruntime (CPU)."""
        session = session_from_onnx(onnx_path, providers=["CPUExecutionProvider"], threads=threads)
        names = [o.name for o in session.get_outputs()]
        return self.measure(lambda feed: dict(zip(names, session.run(names, feed), strict=True)))

    def measure(self, run: Callable[[Feed], dict[str, np.ndarray]]) -> Measurement:
        logits = self._logits(run)
        pred = logits.argmax(axis=1)
        error = np.abs(logits.astype(np.float64) - self.reference_logits)
        return Measurement(questions=len(self.answers), reference_accuracy=self.reference_accuracy,
                           accuracy=float((pred == self.answers).mean()),
                           agreement=float((pred == self.reference_pred).mean()),
                           # NaN logits (a broken graph) must never look good
                           logits_mean_abs=float(error.mean()) if np.isfinite(error).all() else float("inf"))
