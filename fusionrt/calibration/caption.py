"""Calibration and fp16, int8 (TensorRT Q/DQ) and int8-cpu (U8S8) graphs of a caption bundle's two decoder graphs.

Calibration data comes from real decoding: greedy generation of calibration-split scenes through the fp32
bundle on ONNX Runtime, recording the step graph's feed at every step (P from 0 to the caption's end, batches
shrinking as rows finish) and the visual graph's feed per batch. Their minmax ranges (``caption.int8.ranges.json``,
written by :func:`calibrate_caption`) feed the project's Q/DQ recipes (:mod:`fusionrt.calibration.qdq`), the same
for both graphs as for the VQA fusion graph; fp16 is the project's mixed-precision converter with LayerNorm,
Softmax and the reductions kept in float32. The region encoder stays fp32 at every precision.

Budgets, in caption terms (``fusionrt.parity.caption``): exact match and sacrebleu BLEU on held-out scenes may
drop at most 1 point each against fp32 PyTorch. A precision's two graphs enter the bundle only when they hold;
the manifest's ``quantization.<precision>`` records the budget and the measurement.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.bundle.manifest import Bundle, graph_filename
from fusionrt.bundle.transaction import BundleTransaction, update_manifest
from fusionrt.calibration.errors import BudgetExceededError, CalibrationError, QuantizationError
from fusionrt.calibration.fp16 import convert_mixed_precision
from fusionrt.calibration.qdq import RECIPES, write_qdq
from fusionrt.calibration.ranges import Ranges, collect_ranges, validate_ranges
from fusionrt.caption.captioner import CAPTION_TASK, Captioner
from fusionrt.caption.generate import greedy
from fusionrt.caption.steppers import CAPTION_STEP, CAPTION_VISUAL, OrtStepper
from fusionrt.data.world import generate_scene, render, split_seeds
from fusionrt.io import atomic_write_json, utc_timestamp
from fusionrt.parity.caption import BUDGET_POINTS, CaptionReference, caption_parity, caption_reference
from fusionrt.progress import SILENT, Progress

FP32_OPS_IN_FP16 = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Erf", "Pow", "Sqrt", "Div")
GRAPHS = (CAPTION_VISUAL, CAPTION_STEP)
PRECISIONS = ("fp16", "int8", "int8-cpu")
RANGES_FILE = "caption.int8.ranges.json"
DEFAULT_CALIBRATION_SCENES = 64
DEFAULT_HELDOUT_SCENES = 500
CALIBRATION_BATCH = 8
METHOD = "minmax"  # kept: every precision holds its budget with it (benchmarks/RESULTS.md, caption precision)


class RecordingStepper(OrtStepper):
    """An :class:`OrtStepper` that keeps a numpy copy of every step feed (calibration only)."""

    def __init__(self, bundle: Bundle) -> None:
        super().__init__(bundle)
        self.feeds: list[dict[str, np.ndarray]] = []

    def step(self, ids: np.ndarray, new_mask: np.ndarray | None = None) -> np.ndarray:
        new_mask = np.ones(ids.shape, dtype=bool) if new_mask is None else new_mask
        # Copies, never views: OrtValue.numpy() of a CPU tensor shares the OrtValue's memory, which the next
        # step or select() releases. Views kept here read freed memory later (garbage up to 3e38 and NaN in the
        # K/V ranges: every int8 step graph calibrated from them decoded 0 captions right).
        self.feeds.append({
            "input_ids": np.array(ids, dtype=np.int64), "new_mask": np.array(new_mask, dtype=bool),
            "past_mask": self.past_mask.copy(), "past_key": self.past_key.numpy().copy(),
            "past_value": self.past_value.numpy().copy(), "visual_key": self.visual_key.numpy().copy(),
            "visual_value": self.visual_value.numpy().copy(), "visual_mask": self.visual_mask.numpy().copy()})
        return super().step(ids, new_mask)


def decoding_feeds(bundle: Bundle, scenes: int = DEFAULT_CALIBRATION_SCENES, batch: int = CALIBRATION_BATCH,
                   progress: Progress = SILENT) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """(visual-graph feeds, step-graph feeds) recorded while captioning calibration scenes greedily."""
    captioner = Captioner(bundle.path)
    recorder = RecordingStepper(bundle)
    visual_feeds = []
    world = [generate_scene(seed) for seed in split_seeds("calibration", scenes)]
    for start in progress.iterate(range(0, scenes, batch), "decoding calibration scenes", unit="batch"):
        visual, mask = captioner.visual_inputs([render(s) for s in world[start:start + batch]])
        visual_feeds.append({"visual_feats": visual, "visual_mask": mask})
        greedy(recorder, visual, mask, bos=captioner.bos, eos=captioner.eos, max_new_tokens=captioner.max_new_tokens)
    for feed in recorder.feeds:  # a cheap guard against recording the wrong memory again
        for name, array in feed.items():
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise CalibrationError(f"recorded step feed {name}", "finite values", "NaN or infinity")
    return visual_feeds, recorder.feeds


def _caption_bundle(bundle_dir: str | Path | Bundle) -> Bundle:
    bundle = bundle_dir if isinstance(bundle_dir, Bundle) else Bundle.open(bundle_dir)
    if bundle.task != CAPTION_TASK:
        raise QuantizationError("bundle", "a caption bundle", f"task {bundle.task!r}")
    return bundle


def caption_ranges(bundle: Bundle, scenes: int = DEFAULT_CALIBRATION_SCENES,
                   progress: Progress = SILENT) -> tuple[dict[str, Ranges], dict[str, Any]]:
    """Both graphs' activation ranges from decoding ``scenes`` calibration scenes, and a record of the data."""
    if scenes < 1:
        raise CalibrationError("calibration scenes", "at least 1", str(scenes))
    visual_feeds, step_feeds = decoding_feeds(bundle, scenes, progress=progress)
    ranges = {graph: collect_ranges(bundle.graph_path(graph), feeds, METHOD, progress=progress)
              for graph, feeds in ((CAPTION_VISUAL, visual_feeds), (CAPTION_STEP, step_feeds))}
    lengths = sorted({int(f["past_key"].shape[3]) for f in step_feeds})
    record = {"source": "greedy decoding of calibration-split scenes through the fp32 graphs (ONNX Runtime)",
              "scenes": scenes, "batch": CALIBRATION_BATCH, "method": METHOD, "visual_feeds": len(visual_feeds),
              "step_feeds": len(step_feeds), "past_lengths": {"min": lengths[0], "max": lengths[-1],
                                                              "distinct": len(lengths)}}
    return ranges, record


def calibrate_caption(bundle_dir: str | Path, scenes: int = DEFAULT_CALIBRATION_SCENES,
                      progress: Progress = SILENT) -> dict[str, Any]:
    """Collect both graphs' ranges from real decoding, save them as ``caption.int8.ranges.json`` in the bundle and
    record them (with their sha256) in the manifest's ``calibration`` section; return that record."""
    with BundleTransaction(bundle_dir) as tx:
        ranges, record = caption_ranges(_caption_bundle(tx.bundle), scenes, progress)
        target = tx.new_file(RANGES_FILE)
        atomic_write_json(target, {graph: r.to_dict() for graph, r in ranges.items()})
        record = {"file": RANGES_FILE, **record, "created_utc": utc_timestamp()}
        tx.commit(sections={"calibration": record})
    return record


def load_caption_ranges(bundle: Bundle) -> dict[str, Ranges] | None:
    """The ranges :func:`calibrate_caption` saved in the bundle (hash-checked at open), or None."""
    if bundle.manifest.get("calibration", {}).get("file") != RANGES_FILE:
        return None
    data = json.loads(bundle.file(RANGES_FILE).read_text())
    out = {}
    for graph in GRAPHS:
        entry = data[graph]
        values = {name: (float(lo), float(hi)) for name, (lo, hi) in entry["ranges"].items()}
        validate_ranges(values)
        out[graph] = Ranges(entry["method"], values, entry.get("percentile"), int(entry.get("samples", 0)))
    return out


def _write(precision: str, fp32_path: Path, out: Path, ranges: dict[str, Ranges], graph: str) -> None:
    if precision == "fp16":
        convert_mixed_precision(fp32_path, out, keep_fp32_ops=FP32_OPS_IN_FP16)
    else:
        write_qdq(fp32_path, out, ranges[graph], RECIPES[precision])


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    """What the manifest keeps of a caption parity report (the per-scene lists stay out)."""
    return {k: result[k] for k in ("scenes", "token_identical", "first_divergent_step", "exact_match", "bleu",
                                   "gates", "passed")} | {
        "logits_max_abs": max(result["per_step_logits_max_abs"], default=0.0),
        "divergent_scenes": len(result["divergent_scenes"])}


def quantize_caption(bundle_dir: str | Path, precisions: tuple[str, ...] = PRECISIONS, *,
                     calibration_scenes: int = DEFAULT_CALIBRATION_SCENES,
                     heldout_scenes: int = DEFAULT_HELDOUT_SCENES, reference: CaptionReference | None = None,
                     method: str = METHOD, progress: Progress = SILENT) -> dict[str, Any]:
    """Write each precision's two decoder graphs, measure them on ``heldout_scenes`` held-out scenes against
    fp32 PyTorch, and publish those within budget (one manifest commit, ``quantization.<precision>`` recording
    budget and measurement). Raise :class:`BudgetExceededError` (after publishing the others) naming any that
    missed; their graphs never enter the bundle. int8 ranges: the bundle's (``fusionrt calibrate``), else
    collected here from ``calibration_scenes`` and saved too. ``reference``: a :func:`caption_reference`
    computed before (shared by callers that measure several bundles or precisions). ``method``: only minmax."""
    if method != METHOD:  # the only method measured for captions; a silently ignored option would mislead
        raise QuantizationError("method", f"{METHOD} for a caption bundle", repr(method))
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise QuantizationError("precision", f"some of {', '.join(PRECISIONS)}", repr(list(precisions)))
    started = time.perf_counter()
    with BundleTransaction(bundle_dir) as tx:
        bundle = _caption_bundle(tx.bundle)
        paths = {graph: bundle.graph_path(graph) for graph in GRAPHS}
        ranges: dict[str, Ranges] = {}
        calibration = bundle.manifest.get("calibration")
        sections: dict[str, Any] = {}
        if any(p in RECIPES for p in precisions):
            loaded = load_caption_ranges(bundle)
            if loaded is None:
                ranges, record = caption_ranges(bundle, calibration_scenes, progress)
                atomic_write_json(tx.new_file(RANGES_FILE), {g: r.to_dict() for g, r in ranges.items()})
                calibration = sections["calibration"] = {"file": RANGES_FILE, **record, "created_utc": utc_timestamp()}
            else:
                ranges = loaded
        if reference is None:
            reference = caption_reference(bundle, heldout_scenes, progress=progress)
        report: dict[str, Any] = {"task": CAPTION_TASK, "precisions": {}, "calibration": calibration}
        missed: list[str] = []
        passed: dict[str, dict[str, str]] = {}
        with tempfile.TemporaryDirectory(prefix="fusionrt-caption-quant-") as tmp:
            # Graphs are written and measured in a copy of the bundle (a few MB); only those within budget move in.
            trial = Path(tmp) / bundle.path.name
            shutil.copytree(bundle.path, trial, ignore=shutil.ignore_patterns(".*"))
            for precision in precisions:
                progress.note(f"caption {precision}: writing {', '.join(GRAPHS)}")
                files = {graph: graph_filename(graph, precision) for graph in GRAPHS}
                for graph, fp32_path in paths.items():
                    _write(precision, fp32_path, trial / files[graph], ranges, graph)
                opened = update_manifest(trial, files=list(files.values()),
                                         precisions={graph: {precision: name} for graph, name in files.items()})
                result = caption_parity(opened, precision=precision, reference=reference, progress=progress)
                report["precisions"][precision] = result
                if result["passed"]:
                    passed[precision] = files
                else:
                    missed.append(precision)
            if passed:
                quantization = dict(bundle.manifest.get("quantization", {}))
                for precision, files in passed.items():
                    for name in files.values():
                        shutil.copyfile(trial / name, tx.new_file(name))
                    result = report["precisions"][precision]
                    quantization[precision] = {
                        "precision": precision, "created_utc": utc_timestamp(), "files": files,
                        "method": "mixed-precision fp16 (kept in fp32: " + ", ".join(FP32_OPS_IN_FP16) + ")"
                        if precision == "fp16" else f"{RECIPES[precision].activation} Q/DQ, {METHOD} ranges "
                        f"from {RANGES_FILE}",
                        "budget": {"exact_match_drop_points": BUDGET_POINTS, "bleu_drop_points": BUDGET_POINTS,
                                   "against": "fp32 PyTorch greedy on held-out scenes"},
                        "heldout": _summary(result)}
                sections["quantization"] = quantization
            if passed or sections:
                tx.commit(precisions={graph: {p: files[graph] for p, files in passed.items()} for graph in GRAPHS}
                          if passed else None, sections=sections)
    report["seconds"] = round(time.perf_counter() - started, 1)
    if missed:
        raise BudgetExceededError(f"caption {', '.join(missed)}",
                                  f"exact match and BLEU within {BUDGET_POINTS} point of fp32 PyTorch",
                                  "; ".join(f"{p}: {report['precisions'][p]['gates']}" for p in missed), report)
    return report
