"""``fusionrt train``: train region encoder + fusion model and write a checkpoint."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from fusionrt.cli import arguments
from fusionrt.cli.output import check_output
from fusionrt.train_config import TrainConfig

_ARG_TYPES = {"int": arguments.POSITIVE, "float": arguments.real(0, above=True), "str": str}
# Fields that may be 0 (no warmup, no relational questions) or any seed.
_FIELD_TYPES = {"seed": arguments.SEED, "warmup_steps": arguments.NON_NEGATIVE,
                "left_of_per_scene": arguments.NON_NEGATIVE, "weight_decay": arguments.real(0),
                "attribute_loss_weight": arguments.real(0), "grounding_loss_weight": arguments.real(0)}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train the model on the scene world (CPU)")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    for field in fields(TrainConfig):
        if field.type in _ARG_TYPES:
            kind = _FIELD_TYPES.get(field.name, _ARG_TYPES[field.type])
            parser.add_argument(f"--{field.name.replace('_', '-')}", type=kind,
                                default=field.default, help=f"default {field.default}")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    check_output("--out", args.out, directory=True)
    from fusionrt.train import train

    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})
    metrics = train(config, args.out)
    summary = {k: metrics[k] for k in ("accuracy", "per_kind", "train_seconds", "parameters")}
    print(json.dumps(summary, indent=2))
    return 0
