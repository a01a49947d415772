"""``calibrate`` and ``quantize``: add a calibration set, an FP16 graph or INT8 graphs to a bundle.

A precision is registered in the manifest only after it met its accuracy budget on held-out
scenes; a miss raises :class:`BudgetExceededError` (carrying the report) and leaves the bundle as it was.
Each command is one :class:`BundleTransaction`: it holds the bundle's lock from start to end, writes
new files under names the live manifest does not list, and publishes them with one manifest rename,
so a crash at any point leaves the previous bundle (or the new one) openable and verified.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusionrt.bundle.manifest import VQA_TASK, Bundle, graph_filename
from fusionrt.bundle.spec import FUSION, REGION_ENCODER
from fusionrt.bundle.transaction import BundleTransaction
from fusionrt.calibration import polygraphy_loader
from fusionrt.calibration.autocast import (
    DEFAULT_THRESHOLDS,
    Thresholds,
    collect_activation_stats,
    fp32_nodes,
    stats_feeds,
)
from fusionrt.calibration.caption import CAPTION_TASK, calibrate_caption, quantize_caption
from fusionrt.calibration.errors import BudgetExceededError, CalibrationError, QuantizationError
from fusionrt.calibration.fp16 import convert_mixed_precision
from fusionrt.calibration.match import MATCH_TASK, draw_match_pairs, load_match_calibration
from fusionrt.calibration.qdq import CPU, TENSORRT, Recipe, write_qdq
from fusionrt.calibration.ranges import DEFAULT_METHOD, DEFAULT_PERCENTILE, Ranges, collect_ranges
from fusionrt.calibration.safe_range import SECTION as SAFE_RANGES
from fusionrt.calibration.safe_range import safe_ranges_with
from fusionrt.calibration.samples import (
    DEFAULT_SAMPLES,
    MIN_SAMPLES,
    SAMPLES_FILE,
    CalibrationSet,
    draw_scenes,
    load_directory,
    load_set,
    validate,
)
from fusionrt.io import atomic_write_json, utc_timestamp
from fusionrt.parity.budgets import Budget
from fusionrt.parity.heldout import DEFAULT_HELDOUT_SCENES, HeldoutEvaluator, heldout_for
from fusionrt.parity.match import MatchEvaluator
from fusionrt.progress import SILENT, Progress

POLYGRAPHY_LOADER_FILE = "polygraphy_loader.py"
RANGES_FILE = "fusion.int8.ranges.json"


def fp32_fusion_path(bundle: Bundle) -> Path:
    """The fp32 fusion graph: every precision is derived from it."""
    path = bundle.graph_path(FUSION)  # BundleError if the manifest has no fp32 fusion graph
    if not path.is_file():
        raise QuantizationError("fp32 graph", f"{path.name} in {bundle.path}", "nothing (missing file)")
    return path


def _is_caption(bundle_dir: str | Path) -> bool:
    """A caption bundle calibrates and quantizes its two decoder graphs (:mod:`fusionrt.calibration.caption`)."""
    return Bundle.open(bundle_dir, verify=False).task == CAPTION_TASK


def calibrate(bundle_dir: str | Path, samples: int = DEFAULT_SAMPLES, from_dir: str | Path | None = None,
              min_samples: int = MIN_SAMPLES, progress: Progress = SILENT) -> dict[str, Any]:
    """Draw ``samples`` calibration samples from calibration scenes (or load ``from_dir``), save them as
    ``calibration.npz`` in the bundle and record its sha256 in the manifest; return that record.
    A caption bundle: ranges from greedy decoding of ``samples`` calibration scenes (``caption.int8.ranges.json``)."""
    if _is_caption(bundle_dir):
        if from_dir is not None:
            raise CalibrationError("--from", "no feeds directory for a caption bundle (it calibrates on its own "
                                   "decoding of calibration scenes)", str(from_dir))
        return calibrate_caption(bundle_dir, scenes=samples, progress=progress)
    with BundleTransaction(bundle_dir) as tx:
        bundle = tx.bundle
        fp32_fusion_path(bundle)
        spec = bundle.graph(FUSION)
        if from_dir is not None:
            data = load_directory(from_dir, spec, min_samples)
        elif bundle.task == MATCH_TASK:  # real pairs in re-rank shapes (fusionrt.calibration.match)
            data = draw_match_pairs(bundle, samples, progress=progress)
            validate(data.arrays(), spec, min_samples)
        elif bundle.task != VQA_TASK:
            raise CalibrationError("--from", f"a directory of npz feeds for a bundle of task {bundle.task!r} (the "
                                   "scene world's calibration scenes serve only its own model)", "none")
        else:
            if samples < min_samples:
                raise CalibrationError("samples", f"at least {min_samples}", str(samples))
            data = draw_scenes(bundle, samples, progress=progress)
            validate(data.arrays(), spec, min_samples)
        digest = data.save(tx.new_file(SAMPLES_FILE))
        # The Polygraphy data loader (real feeds for `polygraphy run --data-loader-script`), a numpy-only script.
        tx.new_file(POLYGRAPHY_LOADER_FILE).write_bytes(Path(polygraphy_loader.__file__).read_bytes())
        record = {"file": SAMPLES_FILE, "sha256": digest, "samples": len(data), "source": data.source,
                  "lengths": data.lengths(), "created_utc": utc_timestamp(),
                  "polygraphy_loader": POLYGRAPHY_LOADER_FILE}
        tx.commit(sections={"calibration": record})
    return record


def load_calibration(bundle: Bundle, min_samples: int = MIN_SAMPLES) -> CalibrationSet:
    """The bundle's calibration set (hash-checked by :meth:`Bundle.open`)."""
    if "calibration" not in bundle.manifest or SAMPLES_FILE not in bundle.manifest["files"]:
        raise QuantizationError("calibration set", f"{SAMPLES_FILE} in the bundle (run `fusionrt calibrate` first)",
                                "a bundle without one")
    if bundle.task == MATCH_TASK:
        return load_match_calibration(bundle, bundle.file(SAMPLES_FILE), min_samples)
    return load_set(bundle.file(SAMPLES_FILE), bundle.graph(FUSION), min_samples)


def _stage(bundle: Bundle) -> Path:
    # Staged next to the bundle's files so the final move is a rename on the same file system; a
    # transaction removes a stage a crashed writer left (the prefix is in transaction._STALE_PREFIXES).
    return Path(tempfile.mkdtemp(prefix=".quantize-", dir=bundle.path))


def _publish(tx: BundleTransaction, staged: dict[str, Path], precisions: Sequence[str],
             record: dict[str, Any]) -> Bundle:
    bundle = tx.bundle
    adopted = {name: tx.adopt(path, name) for name, path in staged.items()}
    graphs = {FUSION: {p: graph_filename(FUSION, p) for p in precisions}}
    # The region encoder (and a match bundle's embedding graphs) are not quantized: at every precision they run
    # their fp32 file.
    for other in (REGION_ENCODER, *(("text_embed", "image_embed") if bundle.task == MATCH_TASK else ())):
        if other in bundle.graphs:
            graphs[other] = dict.fromkeys(precisions, graph_filename(other))
    quantization = dict(bundle.manifest.get("quantization", {}))
    quantization.update({p: record for p in precisions})
    # Measured on the staged graphs: the runtime refuses feeds past these bounds (see safe_range).
    safe = safe_ranges_with(bundle, {p: adopted[graph_filename(FUSION, p)] for p in precisions})
    return tx.commit(precisions=graphs, sections={"quantization": quantization, SAFE_RANGES: safe})


def _evaluator(bundle: Bundle, evaluator: HeldoutEvaluator | None, heldout_scenes: int,
               heldout: str | Path | None, model: str | None, progress: Progress) -> HeldoutEvaluator:
    """The caller's evaluator, or one over ``heldout`` feeds (a custom bundle) or the scene world's held-out scenes,
    its reference the module the bundle was exported from (or ``model``, a model reference given again)."""
    if evaluator is not None:
        return evaluator
    if bundle.task == MATCH_TASK:  # retrieval budgets on the held-out database (fusionrt.parity.match)
        if heldout is not None:
            raise CalibrationError("--heldout", "no feeds for a match bundle (it is measured on the scene world's "
                                   "held-out matching database)", str(heldout))
        return MatchEvaluator(bundle, progress=progress, torch_options={"model": model} if model else None)
    options = {"model": model} if model else None
    return HeldoutEvaluator(bundle, heldout=heldout_for(bundle, heldout_scenes, heldout, progress,
                                                        torch_options=options))


def fp32_keep_set(bundle_dir: str | Path | Bundle, thresholds: Thresholds = DEFAULT_THRESHOLDS,
                  progress: Progress = SILENT) -> dict[str, str]:
    """Node name -> reason, for the nodes of the bundle's fp32 fusion graph that must stay FP32 in a
    half-precision (FP16 or BF16) copy, measured on the bundle's calibration set (see
    :mod:`fusionrt.calibration.autocast`). Pass its keys to :func:`convert_mixed_precision`."""
    bundle = bundle_dir if isinstance(bundle_dir, Bundle) else Bundle.open(bundle_dir)
    fp32 = fp32_fusion_path(bundle)
    data = load_calibration(bundle)
    progress.note(f"measuring activations over {len(data)} calibration samples (single and in padded batches)")
    return fp32_nodes(fp32, collect_activation_stats(fp32, stats_feeds(data)), thresholds)


def quantize_fp16(bundle_dir: str | Path, keep_fp32_nodes: Sequence[str] | None = None,
                  keep_fp32_ops: Sequence[str] = (), thresholds: Thresholds = DEFAULT_THRESHOLDS,
                  heldout_scenes: int = DEFAULT_HELDOUT_SCENES, budget: Budget | None = None,
                  evaluator: HeldoutEvaluator | None = None, progress: Progress = SILENT,
                  heldout: str | Path | None = None, model: str | None = None) -> dict[str, Any]:
    """Write ``fusion.fp16.onnx``, measure it against fp32 PyTorch, register it if within budget.

    Measured on the scene world's held-out scenes, or for a custom bundle on the npz feeds in ``heldout``
    (reference: the recorded model reference, or ``model`` given again); ``budget`` defaults to the
    evaluator's (:meth:`HeldoutEvaluator.default_budget`).

    The nodes kept in FP32 are measured on the calibration set (:func:`fp32_keep_set` with ``thresholds``)
    unless ``keep_fp32_nodes`` names them; every node of an op type in ``keep_fp32_ops`` is kept too.
    The manifest records the kept nodes (with the reason of each), the thresholds and the Cast count.
    A caption bundle: both decoder graphs, measured in caption terms (:func:`quantize_caption`)."""
    if _is_caption(bundle_dir):
        return quantize_caption(bundle_dir, ("fp16",), heldout_scenes=heldout_scenes, progress=progress)
    with BundleTransaction(bundle_dir) as tx:
        return _quantize_fp16(tx, keep_fp32_nodes, keep_fp32_ops, thresholds, heldout_scenes, budget, evaluator,
                              progress, heldout, model)


def _quantize_fp16(tx: BundleTransaction, keep_fp32_nodes: Sequence[str] | None, keep_fp32_ops: Sequence[str],
                   thresholds: Thresholds, heldout_scenes: int, budget: Budget | None,
                   evaluator: HeldoutEvaluator | None, progress: Progress, heldout: str | Path | None = None,
                   model: str | None = None) -> dict[str, Any]:
    bundle = tx.bundle
    fp32 = fp32_fusion_path(bundle)
    started = time.perf_counter()
    if keep_fp32_nodes is None:
        reasons = fp32_keep_set(bundle, thresholds, progress)
        source = {"from": "calibration set", "thresholds": thresholds.to_dict(),
                  "calibration_sha256": bundle.manifest["calibration"].get("sha256")}
    else:
        reasons = dict.fromkeys(keep_fp32_nodes, "given by the caller")
        source = {"from": "caller"}
    stage = _stage(bundle)
    try:
        name = graph_filename(FUSION, "fp16")
        progress.note(f"converting to fp16 ({len(reasons)} node(s) kept in fp32)")
        summary = convert_mixed_precision(fp32, stage / name, dtype="float16", keep_fp32_nodes=list(reasons),
                                          keep_fp32_ops=keep_fp32_ops)
        summary["fp32_node_reasons"] = {n: reasons.get(n, f"op type in keep_fp32_ops {list(keep_fp32_ops)}")
                                        for n in summary["fp32_nodes"]}
        summary["keep_set"] = source
        evaluator = _evaluator(bundle, evaluator, heldout_scenes, heldout, model, progress)
        budget = budget or evaluator.default_budget("fp16")
        measurement = evaluator.measure_path(stage / name)
        report = {"precision": "fp16", "created_utc": utc_timestamp(), "file": name, "conversion": summary,
                  "heldout": {**evaluator.describe(), **measurement.to_dict(budget)},
                  "seconds": round(time.perf_counter() - started, 1)}
        if measurement.failures(budget):
            raise BudgetExceededError("fp16 graph", f"within {budget.to_dict()} on held-out data",
                                      "; ".join(measurement.failures(budget)), report)
        _publish(tx, {name: stage / name}, ["fp16"], report)
        return report
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def quantize_int8(bundle_dir: str | Path, method: str = DEFAULT_METHOD, percentile: float = DEFAULT_PERCENTILE,
                  heldout_scenes: int = DEFAULT_HELDOUT_SCENES, budget: Budget | None = None,
                  sensitivity: bool = True, ranges: Ranges | None = None, evaluator: HeldoutEvaluator | None = None,
                  recipes: Sequence[Recipe] = (TENSORRT, CPU), progress: Progress = SILENT,
                  heldout: str | Path | None = None, model: str | None = None) -> dict[str, Any]:
    """Collect ranges once over the bundle's calibration set, write ``fusion.int8.onnx`` (TensorRT Q/DQ),
    ``fusion.int8-cpu.onnx`` (ORT CPU U8S8) and ``fusion.int8.ranges.json`` from them, check each graph's
    budget (excluding the fewest sensitive nodes if ``sensitivity``), and register them. ``budget``: one
    budget for every graph; by default each graph gets its precision's (:meth:`HeldoutEvaluator.default_budget`).
    ``heldout``/``model``: as for :func:`quantize_fp16`. A caption bundle: both decoder graphs, measured in caption
    terms (:func:`quantize_caption`)."""
    if _is_caption(bundle_dir):
        return quantize_caption(bundle_dir, tuple(r.precision for r in recipes), heldout_scenes=heldout_scenes,
                                method=method, progress=progress)
    with BundleTransaction(bundle_dir) as tx:
        return _quantize_int8(tx, method, percentile, heldout_scenes, budget, sensitivity, ranges, evaluator,
                              recipes, progress, heldout, model)


def _quantize_int8(tx: BundleTransaction, method: str, percentile: float, heldout_scenes: int,
                   budget: Budget | None, sensitivity: bool, ranges: Ranges | None,
                   evaluator: HeldoutEvaluator | None, recipes: Sequence[Recipe],
                   progress: Progress | None, heldout: str | Path | None = None,
                   model: str | None = None) -> dict[str, Any]:
    bundle = tx.bundle
    fp32 = fp32_fusion_path(bundle)
    started = time.perf_counter()
    if ranges is None:
        data = load_calibration(bundle)
        ranges = collect_ranges(fp32, data.feeds(), method, percentile, progress=progress)
    evaluator = _evaluator(bundle, evaluator, heldout_scenes, heldout, model, progress)
    stage = _stage(bundle)
    try:
        staged: dict[str, Path] = {}
        graphs: dict[str, Any] = {}
        for recipe in recipes:
            # Each graph meets its own precision's budget (int8, int8-cpu) unless the caller passed one for all.
            recipe_budget = budget or evaluator.default_budget(recipe.precision)
            name = graph_filename(FUSION, recipe.precision)
            progress.note(f"writing {name}")
            write_qdq(fp32, stage / name, ranges, recipe)
            measurement = evaluator.measure_path(stage / name)
            entry: dict[str, Any] = {"file": name, "excluded": [],
                                     "heldout": {**evaluator.describe(), **measurement.to_dict(recipe_budget)}}
            if measurement.failures(recipe_budget):
                if not sensitivity:
                    raise BudgetExceededError(f"{recipe.precision} graph", f"within {recipe_budget.to_dict()}",
                                              "; ".join(measurement.failures(recipe_budget)),
                                              {"graphs": {**graphs, recipe.precision: entry}})
                from fusionrt.calibration.sensitivity import exclude_for_budget

                found = exclude_for_budget(fp32, ranges, recipe, evaluator, recipe_budget, progress)
                write_qdq(fp32, stage / name, ranges, recipe, exclude=found["excluded"])
                after = evaluator.measure_path(stage / name)
                entry.update(excluded=found["excluded"], sensitivity=found,
                             before_exclusion=measurement.to_dict(recipe_budget),
                             heldout={**evaluator.describe(), **after.to_dict(recipe_budget)})
            staged[name] = stage / name
            graphs[recipe.precision] = entry
        # No TensorRT legacy calibration cache: see ranges.write_trt_cache for why and how to write one.
        atomic_write_json(stage / RANGES_FILE, ranges.to_dict())
        staged[RANGES_FILE] = stage / RANGES_FILE
        calibration = bundle.manifest.get("calibration", {})
        report = {"precision": "int8", "created_utc": utc_timestamp(), "method": ranges.label,
                  "samples": ranges.samples,
                  "calibration_sha256": calibration.get("sha256"), "tensors": len(ranges.values),
                  "ranges_file": RANGES_FILE, "graphs": graphs,
                  "seconds": round(time.perf_counter() - started, 1)}
        _publish(tx, staged, [r.precision for r in recipes], report)
        return report
    finally:
        shutil.rmtree(stage, ignore_errors=True)
