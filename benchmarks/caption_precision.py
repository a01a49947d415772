"""Caption precisions measured: fp16, int8 (TensorRT Q/DQ, run on ONNX Runtime CPU for accuracy) and int8-cpu (U8S8)
of both decoder graphs against fp32 PyTorch greedy on held-out scenes, plus the int8 calibration variants that
explain the earlier failure. One PyTorch reference (greedy, recompute) serves every row.

    .venv/bin/python benchmarks/caption_precision.py [--scenes 1000] [--out runs/caption-precision]

Rows:
- ``published``: ``fusionrt quantize`` (``quantize_caption``) on a copy of the shipped caption bundle: calibration
  from greedy decoding of 64 calibration scenes (every P from 0 to the longest caption), minmax ranges, the
  project's recipes; what a bundle gets.
- ``step graph only`` / ``visual graph only``: one graph quantized, the other fp32 (which graph costs what).
- ``views (the bug)``: the calibration recorder as it was: numpy views of the OrtValues (released memory by the time
  the ranges were computed).
- ``few P``: ranges from the feeds with P <= 3 only (is coverage over P needed?).
Writes ``caption_precision.json`` under ``--out``; prints a Markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import time
from pathlib import Path

import numpy as np

from fusionrt.bundle.manifest import Bundle
from fusionrt.bundle.transaction import update_manifest
from fusionrt.calibration import caption as caption_quant
from fusionrt.calibration.errors import CalibrationError
from fusionrt.calibration.qdq import RECIPES, write_qdq
from fusionrt.calibration.ranges import collect_ranges
from fusionrt.caption.captioner import SHIPPED_CAPTION_BUNDLE, Captioner
from fusionrt.caption.generate import greedy
from fusionrt.caption.steppers import CAPTION_STEP, CAPTION_VISUAL
from fusionrt.data.world import generate_scene, render, split_seeds
from fusionrt.parity.caption import caption_parity, caption_reference
from fusionrt.progress import progress_for


class ViewRecorder(caption_quant.RecordingStepper):
    """The recorder before the fix: keeps views of the OrtValues' memory."""

    def step(self, ids, new_mask=None):
        new_mask = np.ones(ids.shape, dtype=bool) if new_mask is None else new_mask
        self.feeds.append({
            "input_ids": np.array(ids, dtype=np.int64), "new_mask": np.array(new_mask, dtype=bool),
            "past_mask": self.past_mask.copy(), "past_key": self.past_key.numpy(),
            "past_value": self.past_value.numpy(), "visual_key": self.visual_key.numpy(),
            "visual_value": self.visual_value.numpy(), "visual_mask": self.visual_mask.numpy()})
        return caption_quant.OrtStepper.step(self, ids, new_mask)


def _row(label: str, precision: str, report: dict) -> dict:
    return {"variant": label, "precision": precision, "scenes": report["scenes"],
            "token_identical": report["token_identical"], "first_divergent_step": report["first_divergent_step"],
            "exact_match": report["exact_match"]["candidate"], "exact_reference": report["exact_match"]["reference"],
            "bleu": report["bleu"]["candidate"], "bleu_reference": report["bleu"]["reference"],
            "logits_max_abs": max(report["per_step_logits_max_abs"]), "passed": report["passed"]}


def _save(out: Path, scenes: int, load: float, started: float, rows: list[dict]) -> dict:
    """Write the rows so far (a long run that breaks keeps what it measured)."""
    result = {"scenes": scenes, "load_average_before": load, "seconds": round(time.perf_counter() - started, 1),
              "rows": rows}
    (out / "caption_precision.json").write_text(json.dumps(result, indent=2, default=float))
    return result


def _trial(base: Path, name: str, precision: str, files: dict[str, Path]) -> Bundle:
    """A copy of the fp32 bundle with ``files`` (graph -> written file) registered as ``precision``."""
    path = base / name
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(SHIPPED_CAPTION_BUNDLE, path)
    names = {}
    for graph, source in files.items():
        names[graph] = f"{graph}.{precision}.onnx"
        shutil.copyfile(source, path / names[graph])
    return update_manifest(path, files=list(names.values()),
                           precisions={graph: {precision: n} for graph, n in names.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=1000)
    parser.add_argument("--out", default="runs/caption-precision")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = progress_for(False)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    fp32 = Bundle.open(SHIPPED_CAPTION_BUNDLE)
    cached = out / f"reference-{args.scenes}.pkl"  # the PyTorch side is most of the time: kept for reruns
    if cached.is_file():
        reference = pickle.loads(cached.read_bytes())
    else:
        reference = caption_reference(fp32, args.scenes, progress=progress)
        cached.write_bytes(pickle.dumps(reference))
    rows = []
    # 1. what `fusionrt calibrate` + `fusionrt quantize` publish
    bundle = out / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(SHIPPED_CAPTION_BUNDLE, bundle)
    caption_quant.calibrate_caption(bundle, progress=progress)
    report = caption_quant.quantize_caption(bundle, reference=reference, progress=progress)
    rows += [_row("published (both graphs)", p, r) for p, r in report["precisions"].items()]
    _save(out, args.scenes, load, started, rows)
    published = Bundle.open(bundle)
    ranges = caption_quant.load_caption_ranges(published)
    # 2. one graph at a time (int8-cpu, int8)
    for precision in ("int8-cpu", "int8"):
        for graph in (CAPTION_STEP, CAPTION_VISUAL):
            trial = _trial(out, f"only-{graph}-{precision}", precision,
                           {g: published.graph_path(g, precision if g == graph else "fp32")
                            for g in (CAPTION_VISUAL, CAPTION_STEP)})
            label = "step graph only" if graph == CAPTION_STEP else "visual graph only"
            rows.append(_row(label, precision, caption_parity(trial, precision=precision, reference=reference,
                                                              progress=progress)))
    # 3. calibration variants of the step graph (visual graph as published)
    view_feeds = _record_views(fp32)
    _, feeds = caption_quant.decoding_feeds(fp32)
    variants = {"views (the bug)": view_feeds, "few P (P <= 3)": [f for f in feeds if f["past_key"].shape[3] <= 3]}
    for label, step_feeds in variants.items():
        try:
            step_ranges = collect_ranges(fp32.graph_path(CAPTION_STEP), step_feeds, caption_quant.METHOD)
        except CalibrationError as exc:  # garbage memory may hold inf: then no graph can be written at all
            rows += [{"variant": label, "precision": p, "error": str(exc)} for p in ("int8-cpu", "int8")]
            continue
        for precision in ("int8-cpu", "int8"):
            path = out / f"step.{precision}.onnx"
            write_qdq(fp32.graph_path(CAPTION_STEP), path, step_ranges, RECIPES[precision])
            trial = _trial(out, f"variant-{precision}", precision,
                           {CAPTION_STEP: path, CAPTION_VISUAL: published.graph_path(CAPTION_VISUAL, precision)})
            rows.append(_row(label, precision, caption_parity(trial, precision=precision, reference=reference,
                                                              progress=progress)))
            rows[-1]["widest_range"] = max(abs(v) for lo_hi in step_ranges.values.values() for v in lo_hi)
        _save(out, args.scenes, load, started, rows)
    result = _save(out, args.scenes, load, started, rows)
    result["calibration"] = published.manifest["calibration"]
    result["ranges_tensors"] = {g: len(r.values) for g, r in ranges.items()}
    (out / "caption_precision.json").write_text(json.dumps(result, indent=2, default=float))
    print(f"{args.scenes} held-out scenes, load average {load:.2f} before, {result['seconds']} s")
    print("| variant | precision | token-identical | exact match (fp32 PyTorch) | BLEU (fp32 PyTorch) | "
          "first divergent step | logits max abs | within budget |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['variant']} | {r['precision']} | no graph: {r['error'][:90]} |  |  |  |  | no |")
            continue
        bleu = f"{r['bleu']:.2f} ({r['bleu_reference']:.2f})" if r["bleu"] is not None else "-"
        print(f"| {r['variant']} | {r['precision']} | {100 * r['token_identical']:.2f}% | "
              f"{100 * r['exact_match']:.2f}% ({100 * r['exact_reference']:.2f}%) | {bleu} | "
              f"{r['first_divergent_step'] if r['first_divergent_step'] is not None else '-'} | "
              f"{r['logits_max_abs']:.3g} | {'yes' if r['passed'] else 'no'} |")


def _record_views(bundle: Bundle, scenes: int = caption_quant.DEFAULT_CALIBRATION_SCENES) -> list[dict]:
    """decoding_feeds' loop with the old recorder (its NaN guard would refuse these feeds)."""
    captioner = Captioner(bundle.path)
    recorder = ViewRecorder(bundle)
    world = [generate_scene(seed) for seed in split_seeds("calibration", scenes)]
    batch = caption_quant.CALIBRATION_BATCH
    for start in range(0, scenes, batch):
        visual, mask = captioner.visual_inputs([render(s) for s in world[start:start + batch]])
        greedy(recorder, visual, mask, bos=captioner.bos, eos=captioner.eos, max_new_tokens=captioner.max_new_tokens)
    return recorder.feeds


if __name__ == "__main__":
    main()
