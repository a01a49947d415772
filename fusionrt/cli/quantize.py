"""``fusionrt quantize BUNDLE --precision fp16|int8``: add FP16 or INT8 graphs, within their accuracy budget.

Exit status 0 when every written graph met its budget, 1 when one missed it (the JSON report says
how, and the bundle is left unchanged), 2 for errors.
"""

from __future__ import annotations

import argparse
import json
import sys

from fusionrt.calibration import BudgetExceededError, quantize_fp16, quantize_int8
from fusionrt.calibration.ranges import DEFAULT_METHOD, DEFAULT_PERCENTILE, METHODS
from fusionrt.cli import arguments
from fusionrt.cli.model_args import add_heldout_argument, add_model_argument
from fusionrt.cli.output import add_json_option, write_json
from fusionrt.io import json_safe
from fusionrt.parity.budgets import measured_text
from fusionrt.parity.heldout import DEFAULT_HELDOUT_SCENES
from fusionrt.progress import progress_for

EXIT_BUDGET_MISSED = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("quantize", help="write FP16 or INT8 graphs into a bundle, budget-checked")
    parser.add_argument("bundle", help="bundle directory (for int8: after `fusionrt calibrate`)")
    parser.add_argument("--precision", required=True, choices=("fp16", "int8"),
                        help="int8 writes fusion.int8.onnx (TensorRT) and fusion.int8-cpu.onnx (ORT CPU)")
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS, help=f"default {DEFAULT_METHOD}")
    parser.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE,
                        help=f"for --method percentile (default {DEFAULT_PERCENTILE})")
    parser.add_argument("--keep-fp32", default="", metavar="OPS",
                        help="fp16: comma-separated op types kept in FP32 on top of the nodes the calibration data "
                             "selects (e.g. Softmax,LayerNormalization)")
    parser.add_argument("--keep-fp32-nodes", default=None, metavar="NAMES",
                        help="fp16: comma-separated node names kept in FP32 INSTEAD of the set measured on the "
                             "calibration set ('' keeps none); see the manifest's quantization.fp16.conversion")
    parser.add_argument("--heldout-scenes", type=arguments.POSITIVE, default=DEFAULT_HELDOUT_SCENES,
                        help=f"held-out scenes the budget is measured on (default {DEFAULT_HELDOUT_SCENES})")
    parser.add_argument("--no-sensitivity", action="store_true",
                        help="int8: fail instead of leaving sensitive MatMuls in float when the budget is missed")

    add_heldout_argument(parser)
    add_model_argument(parser, "the model reference again (FILE.py:FACTORY), when its file changed since export")
    add_json_option(parser, "the report")
    parser.set_defaults(handler=run)


def _summary(report: dict) -> list[str]:
    if report.get("task") == "caption":  # a caption bundle: its gates in caption terms
        return [f"{precision:<9} token-identical {100 * r['token_identical']:.2f}%, exact match "
                f"{100 * r['exact_match']['candidate']:.2f}% (fp32 PyTorch {100 * r['exact_match']['reference']:.2f}%)"
                + (f", BLEU {r['bleu']['candidate']:.2f} ({r['bleu']['reference']:.2f})" if r["bleu"]["candidate"]
                   is not None else "") + f" on {r['scenes']} held-out scenes: "
                + ("within budget" if r["passed"] else "MISSED") for precision, r in report["precisions"].items()]
    rows = []
    graphs = report.get("graphs") or {report.get("precision", "?"): report}
    for precision, entry in graphs.items():
        h = entry.get("heldout", {})
        if "questions" in h:
            rows.append(f"{precision:<9} {measured_text(h)}: {'within budget' if h.get('passed') else 'MISSED'}")
        if entry.get("excluded"):
            rows.append(f"          left in float: {', '.join(entry['excluded'])}")
    return rows


def run(args: argparse.Namespace) -> int:
    progress = progress_for(args.quiet)
    try:
        if args.precision == "fp16":
            ops = tuple(op.strip() for op in args.keep_fp32.split(",") if op.strip())
            nodes = None if args.keep_fp32_nodes is None else \
                tuple(n.strip() for n in args.keep_fp32_nodes.split(",") if n.strip())
            report = quantize_fp16(args.bundle, keep_fp32_nodes=nodes, keep_fp32_ops=ops,
                                   heldout_scenes=args.heldout_scenes, progress=progress, heldout=args.heldout,
                                   model=args.model)
        else:
            report = quantize_int8(args.bundle, method=args.method, percentile=args.percentile,
                                   heldout_scenes=args.heldout_scenes, sensitivity=not args.no_sensitivity,
                                   progress=progress, heldout=args.heldout, model=args.model)
        status = 0
    except BudgetExceededError as exc:
        report = {"precision": args.precision, "error": str(exc), **exc.report}
        status = EXIT_BUDGET_MISSED
        print(f"fusionrt quantize: budget missed: {exc}", file=sys.stderr)
    if write_json(args.json, json_safe(report)):
        return status
    print("\n".join(_summary(report)) or json.dumps(json_safe(report), indent=2))
    return status
