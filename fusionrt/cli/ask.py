"""``fusionrt ask IMAGE "QUESTION"``: print the answer and its probability."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fusionrt.app import Answerer
from fusionrt.bundle.manifest import Bundle, is_bundle
from fusionrt.bundle.spec import PRECISIONS
from fusionrt.cli import arguments
from fusionrt.cli.output import add_json_option, write_json
from fusionrt.runtime.session import BACKENDS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ask", help="answer a question about a scene image")
    parser.add_argument("image", help="128x128 RGB image file")
    parser.add_argument("question", help='e.g. "How many red objects are there?"')
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", default=None,
                        help="checkpoint directory: run the PyTorch original (default: the shipped model's "
                             "packaged bundle on ONNX Runtime, without torch)")
    source.add_argument("--bundle", default=None, help="bundle directory written by `fusionrt export`")
    parser.add_argument("--backend", default=None, choices=sorted(BACKENDS),
                        help="runtime backend for a bundle (default onnxruntime, which does not need torch)")
    parser.add_argument("--precision", default="fp32", metavar="{" + ",".join(PRECISIONS) + "}",
                        help="for a bundle: fp32 (default), or another precision the bundle lists")
    parser.add_argument("--top", type=arguments.POSITIVE, default=1, help="also print the next most probable answers")
    add_json_option(parser, "the answer and the top probabilities")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.checkpoint is not None:
        if args.backend is not None:
            print("fusionrt ask: note: --backend applies to a bundle; a checkpoint runs on torch", file=sys.stderr)
        answerer = Answerer(Path(args.checkpoint), precision=args.precision)
    else:
        if args.bundle is not None and not is_bundle(args.bundle):
            Bundle.open(args.bundle)  # raises BundleError saying what is missing
        answerer = Answerer(args.bundle, backend=args.backend or "onnxruntime", precision=args.precision)
    probs = answerer.probabilities(args.image, args.question)
    ranked = sorted(probs.items(), key=lambda item: -item[1])[: args.top]
    if not write_json(args.json, {"answer": ranked[0][0], "probability": ranked[0][1], "top": dict(ranked)}):
        for answer, probability in ranked:
            print(f"{answer}\t{probability:.4f}")
    return 0
