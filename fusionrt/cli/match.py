"""``fusionrt match IMAGE "text"``: the probability that the image shows what the text describes."""

from __future__ import annotations

import argparse

from fusionrt.cli.output import add_json_option, write_json
from fusionrt.runtime.session import BACKENDS
from fusionrt.search.searcher import Matcher


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("match", help="score how well a text describes an image")
    parser.add_argument("image", help="128x128 RGB image file")
    parser.add_argument("text", help='e.g. "a green square left of a yellow triangle"')
    parser.add_argument("--bundle", default=None, help="match bundle (default: the shipped one)")
    parser.add_argument("--backend", default="onnxruntime", choices=sorted(BACKENDS))
    parser.add_argument("--precision", default="fp32")
    add_json_option(parser, "the score")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    matcher = Matcher(args.bundle, args.backend, args.precision)
    try:
        score = matcher.match(args.image, args.text)
    finally:
        matcher.close()
    if not write_json(args.json, {"image": args.image, "text": args.text, "score": score}):
        print(f"{score:.4f}")
    return 0
