"""NVIDIA ModelOpt's INT8 PTQ on our fp32 graph, beside ours: Q/DQ placement and held-out accuracy, side by side.

    PYTHON benchmarks/modelopt_reference.py BUNDLE [--heldout-scenes 500] [--json OUT]

BUNDLE: calibrated and quantized (``fusionrt calibrate``, ``fusionrt quantize --precision int8``). PYTHON: an
environment with ``nvidia-modelopt`` (a reference, never a dependency: see docs/tensorrt.md for a slim CPU install).
ModelOpt quantizes ``fusion.onnx`` from the bundle's calibration set (all 256 samples, padded to the set's widths,
batch 1; ``calibration_method="max"``, ``calibration_eps=["cpu"]``, ``high_precision_dtype="fp32"``), and both
graphs are measured on the same held-out questions against the fp32 PyTorch model. Exits 3 when modelopt is missing.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_int8 import log
from graph_stats import structure

from fusionrt.calibration import HeldoutEvaluator, load_calibration
from fusionrt.progress import progress_for
from fusionrt.runtime import Bundle

NAMES = ("input_ids", "text_mask", "visual_feats", "visual_mask")


def placement(path: Path) -> dict[str, Any]:
    """Per op type, how many nodes read a DequantizeLinear output (and how many there are)."""
    import onnx

    model = onnx.load(str(path))
    producer = {o: n for n in model.graph.node for o in n.output}
    fed: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Constant"):
            continue
        total[node.op_type] += 1
        fed[node.op_type] += any(i in producer and producer[i].op_type == "DequantizeLinear" for i in node.input)
    return {op: f"{fed[op]}/{total[op]}" for op in sorted(total) if fed[op]}


def run_modelopt(fp32: Path, bundle: Bundle, out: Path) -> None:
    from modelopt.onnx.quantization import quantize

    data = load_calibration(bundle)
    arrays = data.arrays()
    text, visual = arrays["input_ids"].shape[1], arrays["visual_feats"].shape[1]
    shapes = f"input_ids:1x{text},text_mask:1x{text},visual_feats:1x{visual}x{arrays['visual_feats'].shape[2]}," \
             f"visual_mask:1x{visual}"
    quantize(str(fp32), quantize_mode="int8", calibration_data={k: arrays[k] for k in NAMES},
             calibration_method="max", calibration_eps=["cpu"], high_precision_dtype="fp32",
             calibration_shapes=shapes, output_path=str(out), log_level="WARNING")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--heldout-scenes", type=int, default=500)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    try:
        import modelopt  # noqa: F401
    except ImportError:
        print("nvidia-modelopt is not installed in this environment: nothing to compare", file=sys.stderr)
        return 3
    bundle = Bundle.open(args.bundle)
    fp32 = bundle.graph_path("fusion")
    ours = bundle.path / bundle.graph("fusion").precisions["int8"]
    work = Path(tempfile.mkdtemp(prefix="modelopt-"))
    theirs = work / "fusion.modelopt.int8.onnx"
    # ModelOpt rewrites its input file in place (it saves the shape-inferred model there): give it a copy.
    shutil.copyfile(fp32, work / "fusion.onnx")
    log("ModelOpt INT8 PTQ on a copy of fusion.onnx")
    run_modelopt(work / "fusion.onnx", bundle, theirs)
    evaluator = HeldoutEvaluator(bundle, args.heldout_scenes, progress=progress_for())
    rows = {}
    for label, path in (("fusionrt fusion.int8.onnx", ours), ("ModelOpt 0.47 int8 (max)", theirs)):
        m = evaluator.measure_path(path)
        rows[label] = {**structure(path), "placement": placement(path), **m.to_dict()}
    ops = sorted(set().union(*(r["placement"] for r in rows.values())))
    labels = list(rows)
    lines = [f"| | {' | '.join(labels)} |", "|---" * (len(labels) + 1) + "|"]
    for key, name in (("nodes", "nodes"), ("qdq", "Q/DQ nodes"), ("int8_gemms", "INT8 GEMMs (both inputs DQ)"),
                      ("weighted_matmuls", "weighted MatMul/Gemm")):
        lines.append(f"| {name} | " + " | ".join(str(rows[k][key]) for k in labels) + " |")
    for op in ops:
        lines.append(f"| {op} reading a DQ | " + " | ".join(rows[k]["placement"].get(op, "0") for k in labels) + " |")
    lines.append("| held-out accuracy | " + " | ".join(f"{100 * rows[k]['accuracy']:.2f}%" for k in labels) + " |")
    lines.append("| argmax agreement | " + " | ".join(f"{100 * rows[k]['agreement']:.2f}%" for k in labels) + " |")
    lines.append("| mean abs logit error | " + " | ".join(f"{rows[k]['logits_mean_abs']:.4f}" for k in labels) + " |")
    print("\n".join(lines))
    log(f"{len(evaluator.answers)} held-out questions; fp32 PyTorch accuracy {100 * evaluator.reference_accuracy:.2f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
