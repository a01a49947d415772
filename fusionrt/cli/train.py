"""``fusionrt train``: train region encoder + fusion model and write a checkpoint."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from fusionrt.train_config import TrainConfig

_ARG_TYPES = {"int": int, "float": float, "str": str}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train the model on the scene world (CPU)")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    for field in fields(TrainConfig):
        if field.type in _ARG_TYPES:
            parser.add_argument(f"--{field.name.replace('_', '-')}", type=_ARG_TYPES[field.type],
                                default=field.default, help=f"default {field.default}")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fusionrt.train import train

    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})
    metrics = train(config, args.out)
    summary = {k: metrics[k] for k in ("accuracy", "per_kind", "train_seconds", "parameters")}
    print(json.dumps(summary, indent=2))
    return 0
