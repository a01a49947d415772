"""``fusionrt caption IMAGE [IMAGE ...] [--beam k]``: print a caption per image."""

from __future__ import annotations

import argparse

from fusionrt.caption.captioner import Captioner
from fusionrt.caption.forms import STEPPER_BACKENDS
from fusionrt.cli import arguments
from fusionrt.cli.output import add_json_option, write_json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("caption", help="caption scene images (the shipped caption model by default)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="128x128 RGB image files")
    parser.add_argument("--bundle", default=None,
                        help="caption bundle (default: the shipped one on ONNX Runtime, without torch) or a "
                             "caption checkpoint directory (PyTorch)")
    parser.add_argument("--beam", type=arguments.POSITIVE, default=1, help="beam width (default 1: greedy)")
    parser.add_argument("--max-new-tokens", type=arguments.POSITIVE, default=None, help="stop after this many tokens")
    parser.add_argument("--precision", default="fp32", help="a precision the bundle lists (default fp32)")
    parser.add_argument("--backend", default="onnxruntime", choices=STEPPER_BACKENDS,
                        help="runs the decoder graphs of a bundle (default onnxruntime)")
    add_json_option(parser, "the captions")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    captioner = Captioner(args.bundle, precision=args.precision, backend=args.backend)
    captions = captioner.caption_many(args.images, beam=args.beam, max_new_tokens=args.max_new_tokens)
    if not write_json(args.json, {"captions": [{"image": image, "caption": caption}
                                               for image, caption in zip(args.images, captions, strict=True)]}):
        for image, caption in zip(args.images, captions, strict=True):
            print(caption if len(args.images) == 1 else f"{image}\t{caption}")
    return 0
