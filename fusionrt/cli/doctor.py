"""``fusionrt doctor``: what this machine can run (backends, versions, providers, GPUs, TensorRT)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("doctor", help="report backends, versions, providers, GPUs, TensorRT engines")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--no-torch", action="store_true", help="do not import torch (faster)")
    parser.add_argument("--bundle", default=None, help="also say which of this bundle's TensorRT engines would load")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fusionrt.runtime.doctor import diagnose, render

    report = diagnose(check_torch=not args.no_torch, bundle=args.bundle)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0
