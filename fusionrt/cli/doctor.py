"""``fusionrt doctor``: what this machine can run (backends, versions, providers, GPUs, TensorRT)."""

from __future__ import annotations

import argparse

from fusionrt.cli.output import add_json_option, write_json
from fusionrt.runtime.doctor import diagnose, render


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("doctor", help="report backends, versions, providers, GPUs, TensorRT engines")

    add_json_option(parser, "the report")
    parser.add_argument("--no-torch", action="store_true", help="do not import torch (faster)")
    parser.add_argument("--bundle", default=None, help="also say which of this bundle's TensorRT engines would load")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    report = diagnose(check_torch=not args.no_torch, bundle=args.bundle)
    if not write_json(args.json, report):
        print(render(report))
    return 0
