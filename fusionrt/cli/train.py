"""``fusionrt train``: train region encoder + fusion model and write a checkpoint."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from fusionrt.train_config import CaptionTrainConfig, TrainConfig

_ARG_TYPES = {"int": int, "float": float, "str": str}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train the model on the scene world (CPU)")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--task", default="vqa", choices=("vqa", "caption"),
                        help="vqa: question answering (default); caption: the caption decoder")
    # Options left out keep the chosen task's default (they differ between the tasks).
    defaults: dict[str, dict[str, object]] = {}
    types: dict[str, type] = {}
    for task, config in (("vqa", TrainConfig), ("caption", CaptionTrainConfig)):
        for field in fields(config):
            if field.type in _ARG_TYPES:
                defaults.setdefault(field.name, {})[task] = field.default
                types[field.name] = _ARG_TYPES[field.type]
    for name, by_task in defaults.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=types[name], default=argparse.SUPPRESS,
                            help="default " + ", ".join(f"{v} ({t})" for t, v in by_task.items()))
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.task == "caption":
        from fusionrt.train_caption import train_caption

        config = CaptionTrainConfig(**{f.name: getattr(args, f.name) for f in fields(CaptionTrainConfig)
                                       if hasattr(args, f.name)})
        metrics = train_caption(config, args.out)
        print(json.dumps({k: metrics[k] for k in ("exact_match", "heldout_scenes", "train_seconds", "total_seconds",
                                                 "parameters")}, indent=2))
        return 0
    from fusionrt.train import train

    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})
    metrics = train(config, args.out)
    summary = {k: metrics[k] for k in ("accuracy", "per_kind", "train_seconds", "parameters")}
    print(json.dumps(summary, indent=2))
    return 0
