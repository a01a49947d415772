"""One held-out set and one fp32 PyTorch reference per run, shared by every accuracy measurement.

:class:`Heldout` pre-processes held-out questions once (render, detect, fp32 region encoder of the bundle,
tokenizer) into fusion batches, and runs the PyTorch fusion module the bundle was exported from on them once.
The accuracy budgets (:class:`HeldoutEvaluator`, used by fp16/int8 quantization and ``fusionrt tune``), the
accuracy tables (:func:`fusionrt.parity.accuracy.accuracy_by_kind`) and the parity stage all read the same
object, so candidates (precisions, calibration methods, exclusion sets) are compared on identical inputs and
the reference is computed once. :class:`MemoizedRuns` lets parity reuse the reference side's outputs across
candidates compared on the same feeds.

A user's model (task "custom") has no scene world: :class:`FeedHeldout` reads its held-out rows from a
directory of npz feeds (keys = the graph's inputs, optionally ``labels``) and offers the same interface
(:class:`HeldoutSet`: batches, labels or None, the reference's outputs), so the evaluator, the budgets and
parity run on it unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.bundle.manifest import VQA_TASK, Bundle
from fusionrt.bundle.source import directory_sha256
from fusionrt.bundle.spec import FUSION, GraphSpec
from fusionrt.data.dataset import QASet
from fusionrt.errors import InputError
from fusionrt.io import read_npz
from fusionrt.parity.budgets import BUDGETS, CUSTOM_BUDGETS, Budget, Measurement
from fusionrt.parity.compare import MetricAccumulator, Runs
from fusionrt.parity.scenes import SceneResult, encode_scene_regions, heldout_questions, question_batches
from fusionrt.progress import SILENT, Progress
from fusionrt.runtime.backends.onnxrt import session_from_onnx
from fusionrt.runtime.session import Session
from fusionrt.runtime.validate import FeedValidator

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


def logits_output(spec: GraphSpec) -> str | None:
    """The output argmax agreement and accuracy are taken on: ``logits`` if it is [B, A], else the only
    output of shape [B, A] (A fixed); None when there is none (e.g. a module returning hidden states only)."""
    ranked = [t for t in spec.outputs if len(t.shape) == 2 and isinstance(t.shape[1], int)]
    named = [t for t in ranked if t.name == "logits"]
    chosen = named or (ranked if len(ranked) == 1 else [])
    return chosen[0].name if chosen else None


class HeldoutSet:
    """What every held-out measurement reads: fusion ``batches``, ``labels`` per row (or None), the reference's
    outputs on each batch (computed once), the output argmax is taken on, and a description for reports."""

    bundle: Bundle
    batches: list[Feed]
    labels: np.ndarray | None
    scenes: int | None = None
    logits_output: str | None = "logits"

    def _init_reference(self, reference: Runs | None, torch_options: Mapping[str, Any] | None,
                        progress: Progress) -> None:
        self._reference = reference
        self._torch_options = dict(torch_options or {})
        self._reference_outputs: list[dict[str, np.ndarray]] | None = None
        self._progress = progress

    @property
    def rows(self) -> int:
        return sum(int(feed["input_ids"].shape[0]) for feed in self.batches)

    def describe(self) -> dict[str, Any]:
        return {"scenes": self.scenes}

    @property
    def reference_outputs(self) -> list[dict[str, np.ndarray]]:
        """The reference's outputs on each batch, computed on first use."""
        if self._reference_outputs is None:
            self._progress.note(f"fp32 PyTorch reference on {self.rows} held-out rows")
            if self._reference is not None:
                self._reference_outputs = [self._reference.run(feed) for feed in self.batches]
            else:
                with Session(self.bundle, "torch", FUSION, **self._torch_options) as reference:
                    self._reference_outputs = [reference.run(feed) for feed in self.batches]
        return self._reference_outputs

    def reference(self, output: str) -> np.ndarray:
        """One reference output over every row, batches concatenated (``logits`` [Q, A])."""
        return np.concatenate([out[output] for out in self.reference_outputs])


class Heldout(HeldoutSet):
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
        self._init_reference(reference, torch_options, progress)

    def subset(self, scenes: int) -> Heldout:
        """The first ``scenes`` scenes as a held-out set of their own, sharing this one's pre-processing and
        reference runner (a :class:`MemoizedRuns` reference then recomputes only the last, partial batch)."""
        if scenes >= self.scenes:
            return self
        view = Heldout.__new__(Heldout)
        view._setup(self.bundle, scenes, self.qa.first_scenes(scenes), self._visual[:scenes],
                    self._visual_mask[:scenes], self._batch, self._progress, self._reference, self._torch_options)
        return view

    def scene_questions(self, scenes: int) -> QASet:
        """The questions of the first ``scenes`` held-out scenes: the same scenes parity compares on."""
        if scenes <= self.scenes:
            return self.qa.first_scenes(scenes)
        return heldout_questions(self.bundle, scenes, progress=self._progress)


LABELS = "labels"


class FeedHeldout(HeldoutSet):
    """A user's held-out rows: every ``*.npz`` in ``directory`` is a feed of the fusion graph (any batch size,
    split at the graph's max B), optionally with ``labels`` (int64 [N], one class per row of the logits-like
    output) in every file or in none. Checked as the runtime checks a feed; :class:`InputError` names the file."""

    def __init__(self, bundle: Bundle, directory: str | Path, progress: Progress = SILENT,
                 reference: Runs | None = None, torch_options: Mapping[str, Any] | None = None,
                 where: str = "--heldout") -> None:
        self.bundle = bundle
        self.directory = Path(directory)
        spec = bundle.graph(FUSION)
        self.logits_output = logits_output(spec)
        if not self.directory.is_dir():
            raise InputError(where, "a directory of npz feeds", f"no directory at {self.directory}")
        files = sorted(self.directory.glob("*.npz"))
        if not files:
            raise InputError(where, "*.npz files, each a feed of the fusion graph", f"no npz file in {self.directory}")
        self.sha256 = directory_sha256(self.directory)
        validator = FeedValidator(spec)
        step = spec.dims["B"].max
        inputs = [t.name for t in spec.inputs]
        self.batches, labels = [], []
        labelled = LABELS in read_npz(files[0])
        for file in files:
            arrays = read_npz(file)
            missing = [k for k in inputs if k not in arrays]
            if missing:
                raise InputError(f"{file.name}", f"arrays named {inputs} (+ optional {LABELS!r})",
                                 f"keys {sorted(arrays)}")
            rows = int(arrays["input_ids"].shape[0]) if arrays["input_ids"].ndim else 0
            self._check_labels(file, arrays.get(LABELS), rows, files[0], labelled, spec)
            for start in range(0, rows, step):
                feed = {k: np.ascontiguousarray(arrays[k][start:start + step]) for k in inputs}
                try:
                    feed = validator(feed)  # an empty region set becomes one masked slot, as at run time
                except InputError as exc:
                    raise InputError(f"{file.name} rows {start}-{start + len(feed['input_ids']) - 1}",
                                     "a feed the fusion graph accepts", str(exc)) from exc
                self.batches.append(feed)
            if LABELS in arrays:
                labels.append(arrays[LABELS].astype(np.int64))
        self.labels = np.concatenate(labels) if labels else None
        self.files = len(files)
        self._init_reference(reference, torch_options, progress)

    def _check_labels(self, file: Path, labels: np.ndarray | None, rows: int, first: Path, first_has: bool,
                      spec: GraphSpec) -> None:
        if (labels is not None) != first_has:
            raise InputError(f"{file.name} {LABELS}", f"labels in every feed or in none (as in {first.name})",
                             "labels" if labels is not None else "no labels")
        if labels is None:
            return
        if self.logits_output is None:
            raise InputError(f"{file.name} {LABELS}", "labels only for a model with a logits-like output [B, A]",
                             f"outputs {[f'{t.name} {t.shape_text()}' for t in spec.outputs]}")
        classes = int(spec.outputs[[t.name for t in spec.outputs].index(self.logits_output)].shape[1])
        if labels.ndim != 1 or labels.shape[0] != rows or labels.dtype.kind not in "iu":
            raise InputError(f"{file.name} {LABELS}", f"integers, one per row ([{rows}])",
                             f"{labels.dtype} {list(labels.shape)}")
        if rows and (labels.min() < 0 or labels.max() >= classes):
            raise InputError(f"{file.name} {LABELS}", f"class indices in [0, {classes - 1}] of {self.logits_output}",
                             f"values {int(labels.min())}..{int(labels.max())}")

    def describe(self) -> dict[str, Any]:
        return {"feeds": str(self.directory.resolve()), "files": self.files, "rows": self.rows,
                "labels": self.labels is not None, "sha256": self.sha256}


def heldout_for(bundle: Bundle, scenes: int = DEFAULT_HELDOUT_SCENES, feeds: str | Path | None = None,
                progress: Progress = SILENT, reference: Runs | None = None,
                torch_options: Mapping[str, Any] | None = None) -> HeldoutSet:
    """The held-out set a bundle is measured on: its feeds directory if given, else the scene world's held-out
    scenes (a bundle of the VQA task only; a custom bundle without feeds is refused)."""
    if feeds is not None:
        return FeedHeldout(bundle, feeds, progress, reference, torch_options)
    if bundle.task != VQA_TASK:
        raise InputError("--heldout", f"a directory of held-out npz feeds for a bundle of task {bundle.task!r} (the "
                         "scene world's held-out questions serve only its own model)", "none")
    return Heldout(bundle, scenes, BATCH, progress, reference, torch_options)


class HeldoutEvaluator:
    """Accuracy, agreement and per-output cosine of a candidate fusion graph against the fp32 PyTorch reference on
    a :class:`HeldoutSet`.

    Pass ``heldout`` to share one held-out set and reference between evaluators and stages; otherwise one is
    built from ``bundle``, ``scenes``, ``batch``, ``progress`` and ``reference`` (the scene world's).
    """

    def __init__(self, bundle: Bundle, scenes: int = DEFAULT_HELDOUT_SCENES, batch: int = BATCH,
                 progress: Progress = SILENT, reference: Any = None, heldout: HeldoutSet | None = None) -> None:
        self.heldout = heldout if heldout is not None else Heldout(bundle, scenes, batch, progress, reference)
        self.task = bundle.task
        self.scenes = self.heldout.scenes
        self.batches = self.heldout.batches
        self.answers = self.heldout.labels
        self.logits_output = self.heldout.logits_output
        self.reference_logits = self.heldout.reference(self.logits_output) if self.logits_output else None
        self.reference_pred = self.reference_logits.argmax(axis=1) if self.reference_logits is not None else None
        self.reference_accuracy = (float((self.reference_pred == self.answers).mean())
                                   if self.answers is not None and self.reference_pred is not None else None)

    def default_budget(self, precision: str) -> Budget:
        """The budget a precision meets by default: the scene world's, or a custom model's without the gates its
        held-out data cannot measure (no labels: no accuracy drop; no logits-like output: no agreement)."""
        if self.task == VQA_TASK and isinstance(self.heldout, Heldout):
            return BUDGETS[precision]
        budget = CUSTOM_BUDGETS[precision]
        unmeasured = [gate for gate, missing in (("max_drop_points", self.answers is None),
                                                 ("min_agreement", self.logits_output is None)) if missing]
        return budget.without(*unmeasured)

    def describe(self) -> dict[str, Any]:
        return self.heldout.describe()

    def measure_path(self, onnx_path: str | Path, threads: int | None = None) -> Measurement:
        """Accuracy and agreement of the fusion graph at ``onnx_path`` on onnxruntime (CPU)."""
        session = session_from_onnx(onnx_path, providers=["CPUExecutionProvider"], threads=threads)
        names = [o.name for o in session.get_outputs()]
        return self.measure(lambda feed: dict(zip(names, session.run(names, feed), strict=True)))

    def measure(self, run: Callable[[Feed], dict[str, np.ndarray]]) -> Measurement:
        cosine: dict[str, MetricAccumulator] = {}
        logits = []
        for feed, reference in zip(self.batches, self.heldout.reference_outputs, strict=True):
            out = run(feed)
            for name, value in reference.items():
                cosine.setdefault(name, MetricAccumulator()).add(value, out[name])
            if self.logits_output:
                logits.append(out[self.logits_output])
        cosines = {name: float(acc.result()["cosine"]) for name, acc in cosine.items()}
        rows = self.heldout.rows
        if not self.logits_output:
            return Measurement(questions=rows, reference_accuracy=None, accuracy=None, agreement=None,
                               logits_mean_abs=0.0, cosine=cosines)
        values = np.concatenate(logits)
        pred = values.argmax(axis=1)
        error = np.abs(values.astype(np.float64) - self.reference_logits)
        return Measurement(questions=rows, reference_accuracy=self.reference_accuracy,
                           accuracy=float((pred == self.answers).mean()) if self.answers is not None else None,
                           agreement=float((pred == self.reference_pred).mean()),
                           # NaN logits (a broken graph) must never look good
                           logits_mean_abs=float(error.mean()) if np.isfinite(error).all() else float("inf"),
                           cosine=cosines)


def compare_heldout(heldout: HeldoutSet, candidate: Runs, progress: Progress = SILENT) -> SceneResult:
    """Parity of ``candidate`` (a fusion runner) against the held-out set's reference outputs on its batches:
    metrics of every output, argmax agreement of the logits-like output, accuracy when there are labels."""
    accumulators: dict[str, MetricAccumulator] = {}
    logits: list[np.ndarray] = []
    with progress.phase("held-out feeds", total=heldout.rows, unit="row") as bar:
        for feed, reference in zip(heldout.batches, heldout.reference_outputs, strict=True):
            out = candidate.run(feed)
            for name, value in reference.items():
                accumulators.setdefault(name, MetricAccumulator()).add(value, out[name])
            if heldout.logits_output:
                logits.append(out[heldout.logits_output])
            bar.update(int(feed["input_ids"].shape[0]))
    agreement = accuracy = None
    if heldout.logits_output:
        ref_pred = heldout.reference(heldout.logits_output).argmax(axis=1)
        pred = np.concatenate(logits).argmax(axis=1)
        agreement = float((pred == ref_pred).mean())
        if heldout.labels is not None:
            accuracy = {"reference": float((ref_pred == heldout.labels).mean()),
                        "candidate": float((pred == heldout.labels).mean())}
    return SceneResult(scenes=0, questions=heldout.rows, metrics={n: a.result() for n, a in accumulators.items()},
                       agreement=agreement, accuracy=accuracy, label="held-out feeds")
