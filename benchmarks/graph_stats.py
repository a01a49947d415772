"""Structure, accuracy and ORT CPU latency of every graph of a bundle, in one run (issue 7's before/after table).

    .venv/bin/python benchmarks/graph_stats.py BUNDLE [BUNDLE ...] [--labels before,after]
                                               [--heldout-scenes 500] [--runs 60] [--threads 1] [--json OUT]

Per graph (fusion fp32 / fp16 / int8 / int8-cpu, region encoder): node count, Cast count, Q/DQ count,
INT8 GEMMs / weighted MatMuls (a weighted MatMul or Gemm has an initializer, or a DequantizeLinear of
one, as input B; it is an INT8 GEMM on TensorRT only when both inputs come from a DequantizeLinear),
held-out accuracy and argmax agreement against the fp32 PyTorch model, and ORT CPU median latency at
B=1 and B=8 (real calibration samples, timed in rotating blocks with a pause between blocks, see
``measure`` in bench_int8.py) with the ratio to the first bundle's fp32 graph, all measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench_int8 import feeds, log, measure, ort_fn

from fusionrt.parity.heldout import HeldoutEvaluator
from fusionrt.progress import progress_for
from fusionrt.runtime import Bundle

QDQ = ("QuantizeLinear", "DequantizeLinear")


def structure(path: Path) -> dict[str, Any]:
    """Node, Cast and Q/DQ counts; weighted MatMul/Gemm count and how many have both inputs dequantized."""
    import onnx

    model = onnx.load(str(path))
    nodes = list(model.graph.node)
    initializers = {i.name for i in model.graph.initializer}
    producer = {out: n for n in nodes for out in n.output}

    def from_dq(name: str) -> bool:
        return name in producer and producer[name].op_type == "DequantizeLinear"

    def is_weight(name: str) -> bool:
        # a weight directly, or through DequantizeLinear / QuantizeLinear (ModelOpt) / Cast (FP16 graphs)
        node = producer.get(name)
        while node is not None and node.op_type in ("DequantizeLinear", "QuantizeLinear", "Cast"):
            name, node = node.input[0], producer.get(node.input[0])
        return name in initializers

    weighted = [n for n in nodes if n.op_type in ("MatMul", "Gemm") and is_weight(n.input[1])]
    int8 = [n for n in weighted if from_dq(n.input[0]) and from_dq(n.input[1])]
    ops = Counter(n.op_type for n in nodes)
    return {"nodes": len(nodes), "casts": ops["Cast"], "qdq": ops["QuantizeLinear"] + ops["DequantizeLinear"],
            "weighted_matmuls": len(weighted), "int8_gemms": len(int8)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", help="bundle directories (e.g. before and after), timed in one run")
    parser.add_argument("--labels", default=None, help="comma-separated names of the bundles (default: 1, 2, ...)")
    parser.add_argument("--heldout-scenes", type=int, default=500)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1,
                        help="ORT intra-op threads (1: robust on a shared machine; spinning thread pools are not)")
    parser.add_argument("--json", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    labels = args.labels.split(",") if args.labels else [str(i + 1) for i in range(len(args.bundles))]
    bundles = dict(zip(labels, (Bundle.open(b) for b in args.bundles), strict=True))
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    paths: dict[tuple[str, str], Path] = {}
    for label, bundle in bundles.items():
        for precision, name in bundle.graph("fusion").precisions.items():
            paths[label, precision] = bundle.path / name
            rows[label, precision] = structure(bundle.path / name)
        rows[label, "region_encoder"] = structure(bundle.graph_path("region_encoder"))
    first = next(iter(bundles.values()))
    # One evaluator serves every bundle: same checkpoint, same region encoder, so the same held-out feeds.
    log(f"held-out evaluation on {args.heldout_scenes} scenes")
    evaluator = HeldoutEvaluator(first, args.heldout_scenes, progress=progress_for())
    for key, path in paths.items():
        m = evaluator.measure_path(path, threads=args.threads)
        rows[key].update(accuracy=m.accuracy, agreement=m.agreement, questions=m.questions)
    candidates = {key: ort_fn(path, args.threads) for key, path in paths.items()}
    reference = (labels[0], "fp32")
    for batch, feed in feeds(first).items():
        log(f"timing B={batch} ({len(candidates)} graphs, blocks of consecutive calls)")
        ms = measure(candidates, feed, args.runs, args.warmup)
        for key, value in ms.items():
            rows[key][f"ms_b{batch}"] = value
            rows[key][f"ratio_b{batch}"] = ms[reference] / value
    lines = ["| bundle | graph | nodes | Casts | Q/DQ | INT8 GEMMs / weighted MatMuls | held-out accuracy | "
             f"agreement | ORT ms B=1 ({reference[0]} fp32 / this) | ORT ms B=8 (same) |", "|---" * 10 + "|"]
    for (label, name), r in rows.items():
        acc = f"{100 * r['accuracy']:.2f}%" if "accuracy" in r else "-"
        agree = f"{100 * r['agreement']:.2f}%" if "agreement" in r else "-"
        lat = [f"{r[f'ms_b{b}']:.3f} ({r[f'ratio_b{b}']:.2f}x)" if f"ms_b{b}" in r else "-" for b in (1, 8)]
        lines.append(f"| {label} | {name} | {r['nodes']} | {r['casts']} | {r['qdq']} | "
                     f"{r['int8_gemms']} / {r['weighted_matmuls']} | {acc} | {agree} | {lat[0]} | {lat[1]} |")
    print("\n".join(lines))
    shapes = {b: f"{b}/{f['input_ids'].shape[1]}/{f['visual_feats'].shape[1]}" for b, f in feeds(first).items()}
    log(f"fp32 PyTorch accuracy {100 * evaluator.reference_accuracy:.2f}% on {len(evaluator.answers)} questions; "
        f"B/T/M timed: {list(shapes.values())}; {args.threads} ORT thread(s), median of {args.runs}")
    if args.json:
        Path(args.json).write_text(json.dumps({f"{k[0]}/{k[1]}": v for k, v in rows.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
