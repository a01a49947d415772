"""fp16, int8 (TensorRT Q/DQ) and int8-cpu (U8S8) graphs of a caption bundle's two decoder graphs.

Calibration data comes from real decoding: greedy generation of calibration-split scenes through the fp32
bundle on ONNX Runtime, recording the step graph's feed at every step (P from 0 to the caption's end, batches
shrinking as rows finish) and the visual graph's feed per batch. The ranges (minmax over those feeds) feed the
project's Q/DQ recipes (:mod:`fusionrt.calibration.qdq`); fp16 is the project's mixed-precision converter with
LayerNorm, Softmax and the reductions kept in float32. The region encoder stays fp32.

Budgets, in caption terms (``fusionrt.parity.caption``): exact match and sacrebleu BLEU on held-out scenes may
drop at most 1 point each against fp32 PyTorch; the graphs are published into the bundle only when they hold.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.bundle.manifest import Bundle, graph_filename
from fusionrt.bundle.transaction import update_manifest
from fusionrt.calibration.errors import BudgetExceededError, QuantizationError
from fusionrt.calibration.fp16 import convert_mixed_precision
from fusionrt.calibration.qdq import RECIPES, write_qdq
from fusionrt.calibration.ranges import collect_ranges
from fusionrt.caption.captioner import Captioner
from fusionrt.caption.generate import greedy
from fusionrt.caption.steppers import CAPTION_STEP, CAPTION_VISUAL, OrtStepper
from fusionrt.data.world import generate_scene, render, split_seeds
from fusionrt.io import atomic_path
from fusionrt.parity.caption import BUDGET_POINTS, caption_parity
from fusionrt.progress import SILENT, Progress

FP32_OPS_IN_FP16 = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Erf", "Pow", "Sqrt", "Div")


class RecordingStepper(OrtStepper):
    """An :class:`OrtStepper` that keeps a numpy copy of every step feed (calibration only)."""

    def __init__(self, bundle: Bundle) -> None:
        super().__init__(bundle)
        self.feeds: list[dict[str, np.ndarray]] = []

    def step(self, ids: np.ndarray, new_mask: np.ndarray | None = None) -> np.ndarray:
        new_mask = np.ones(ids.shape, dtype=bool) if new_mask is None else new_mask
        self.feeds.append({
            "input_ids": np.array(ids, dtype=np.int64), "new_mask": np.array(new_mask, dtype=bool),
            "past_mask": self.past_mask.copy(), "past_key": self.past_key.numpy(),
            "past_value": self.past_value.numpy(), "visual_key": self.visual_key.numpy(),
            "visual_value": self.visual_value.numpy(), "visual_mask": self.visual_mask.numpy()})
        return super().step(ids, new_mask)


def decoding_feeds(bundle: Bundle, scenes: int = 64, batch: int = 8,
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
    return visual_feeds, recorder.feeds


def quantize_caption(bundle_dir: str | Path, precisions: tuple[str, ...] = ("fp16", "int8-cpu", "int8"), *,
                     calibration_scenes: int = 64, heldout_scenes: int = 200,
                     progress: Progress = SILENT) -> dict[str, Any]:
    """Write each precision's two decoder graphs, check its budget on held-out scenes, and publish those that
    hold; raise :class:`BudgetExceededError` (after publishing the others) naming any that missed, whose graphs
    never enter the bundle."""
    bundle = Bundle.open(bundle_dir)
    if bundle.task != "caption":
        raise QuantizationError("bundle", "a caption bundle", f"task {bundle.task!r}")
    unknown = [p for p in precisions if p not in ("fp16", *RECIPES)]
    if unknown:
        raise QuantizationError("precision", f"some of fp16, {', '.join(RECIPES)}", repr(unknown))
    paths = {graph: bundle.graph_path(graph) for graph in (CAPTION_VISUAL, CAPTION_STEP)}
    ranges = {}
    report: dict[str, Any] = {"precisions": {}, "calibration": None}
    if any(p in RECIPES for p in precisions):
        visual_feeds, step_feeds = decoding_feeds(bundle, calibration_scenes, progress=progress)
        ranges = {CAPTION_VISUAL: collect_ranges(paths[CAPTION_VISUAL], visual_feeds, "minmax", progress=progress),
                  CAPTION_STEP: collect_ranges(paths[CAPTION_STEP], step_feeds, "minmax", progress=progress)}
        report["calibration"] = {"scenes": calibration_scenes, "step_feeds": len(step_feeds),
                                 "past_lengths": sorted({int(f["past_key"].shape[3]) for f in step_feeds})}
    missed, passed = [], {}
    with tempfile.TemporaryDirectory(prefix="fusionrt-caption-quant-") as tmp:
        # Graphs are written and measured in a copy of the bundle (a few MB); only those within budget move in.
        trial = Path(tmp) / bundle.path.name
        shutil.copytree(bundle.path, trial)
        for precision in precisions:
            files = {graph: graph_filename(graph, precision) for graph in paths}
            for graph, fp32_path in paths.items():
                if precision == "fp16":
                    convert_mixed_precision(fp32_path, trial / files[graph], keep_fp32_ops=FP32_OPS_IN_FP16)
                else:
                    write_qdq(fp32_path, trial / files[graph], ranges[graph], RECIPES[precision])
            opened = update_manifest(trial, files=list(files.values()),
                                     precisions={graph: {precision: name} for graph, name in files.items()})
            result = caption_parity(opened, scenes=heldout_scenes, precision=precision, progress=progress)
            report["precisions"][precision] = result
            if result["passed"]:
                passed[precision] = files
            else:
                missed.append(precision)
        for files in passed.values():
            for name in files.values():
                with atomic_path(bundle.path / name) as target:
                    shutil.copyfile(trial / name, target)
    if passed:
        update_manifest(bundle.path, files=[n for files in passed.values() for n in files.values()],
                        precisions={graph: {p: files[graph] for p, files in passed.items()} for graph in paths})
    if missed:
        raise BudgetExceededError(f"caption {', '.join(missed)}",
                                  f"exact match and BLEU within {BUDGET_POINTS} point of fp32 PyTorch",
                                  "; ".join(f"{p}: {report['precisions'][p]['gates']}" for p in missed), report)
    return report
