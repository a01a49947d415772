"""The measured choices of issue 7: Q/DQ placement options for the TensorRT INT8 graph and FP32 keep-sets for FP16.

    .venv/bin/python benchmarks/graph_options.py BUNDLE [--heldout-scenes 500] [--json OUT]

BUNDLE: an exported and calibrated bundle (``fusionrt export`` + ``fusionrt calibrate``). Every candidate is written
from the same ranges / calibration set and measured on the same held-out questions against the fp32 PyTorch model
(accuracy, argmax agreement, mean |logit error|), with its node / Cast / Q/DQ counts. INT8 options: Q/DQ on every
MatMul/Gemm input (the default), on weighted MatMuls only (QK^T and attn.V left float), and the default plus Q/DQ on
the inputs of residual Adds and LayerNorms (ModelOpt's placement). FP16 options: the keep-set measured on the
calibration set (the default), nothing kept, Softmax kept, and the fixed op list used before issue 7.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from bench_int8 import log
from graph_stats import structure

from fusionrt.calibration import (
    TENSORRT,
    HeldoutEvaluator,
    collect_ranges,
    convert_mixed_precision,
    fp32_keep_set,
    load_calibration,
    write_qdq,
)
from fusionrt.progress import progress_for
from fusionrt.runtime import Bundle

BEFORE_OPS = ["LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Erf", "Pow", "Sqrt", "Div", "Where", "Clip"]
INT8_OPTIONS = {
    "int8: all MatMul/Gemm inputs (default)": TENSORRT,
    "int8: weighted MatMuls only (QK^T, attn.V float)": dataclasses.replace(TENSORRT, attention_matmuls=False),
    "int8: default + residual Add and LayerNorm inputs (ModelOpt-like)":
        dataclasses.replace(TENSORRT, residual_layernorm_inputs=True),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--heldout-scenes", type=int, default=500)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    bundle = Bundle.open(args.bundle)
    fp32 = bundle.graph_path("fusion")
    work = Path(tempfile.mkdtemp(prefix="graph-options-"))
    keep = list(fp32_keep_set(bundle.path, progress=progress_for()))
    fp16_options = {"fp16: keep-set from data (default)": {"keep_fp32_nodes": keep},
                    "fp16: nothing kept in fp32": {},
                    "fp16: Softmax kept": {"keep_fp32_ops": ["Softmax"]},
                    "fp16: fixed op list (before issue 7)": {"keep_fp32_ops": BEFORE_OPS}}
    paths = {}
    for i, (label, options) in enumerate(fp16_options.items()):
        paths[label] = work / f"fp16-{i}.onnx"
        convert_mixed_precision(fp32, paths[label], **options)
    samples = load_calibration(bundle)
    for i, (label, recipe) in enumerate(INT8_OPTIONS.items()):
        log(f"ranges and graph: {label}")
        ranges = collect_ranges(fp32, samples.feeds(), "minmax", op_types=recipe.op_types,
                                drop_constant=recipe.residual_layernorm_inputs)
        paths[label] = work / f"int8-{i}.onnx"
        write_qdq(fp32, paths[label], ranges, recipe)
    evaluator = HeldoutEvaluator(bundle, args.heldout_scenes, progress=progress_for())
    rows = {}
    lines = ["| option | nodes | Casts | Q/DQ | INT8 GEMMs / weighted MatMuls | accuracy | agreement | "
             "mean abs logit error |", "|---" * 8 + "|"]
    for label, path in paths.items():
        m = evaluator.measure_path(path)
        rows[label] = {**structure(path), **m.to_dict()}
        r = rows[label]
        lines.append(f"| {label} | {r['nodes']} | {r['casts']} | {r['qdq']} | {r['int8_gemms']} / "
                     f"{r['weighted_matmuls']} | {100 * m.accuracy:.2f}% | {100 * m.agreement:.2f}% | "
                     f"{m.logits_mean_abs:.4f} |")
    print("\n".join(lines))
    log(f"{len(evaluator.answers)} held-out questions, fp32 PyTorch accuracy {100 * evaluator.reference_accuracy:.2f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
