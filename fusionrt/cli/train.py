"""``fusionrt train``: train a model on the scene world (CPU) and write a checkpoint.

``--task vqa`` (the default): region encoder + fusion model answering questions. ``--task match``: the
matching model (ITM + dual encoder) for search. Each task takes the settings of its own config; a setting
given that the task does not have is refused."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from fusionrt.cli import arguments
from fusionrt.cli.output import check_output
from fusionrt.errors import InputError
from fusionrt.train_config import CaptionTrainConfig, MatchTrainConfig, TrainConfig

_ARG_TYPES = {"int": arguments.POSITIVE, "float": arguments.real(0, above=True), "str": str}
# Fields that may be 0 (no warmup, no relational questions, no time bound) or any seed.
_FIELD_TYPES = {"seed": arguments.SEED, "warmup_steps": arguments.NON_NEGATIVE,
                "left_of_per_scene": arguments.NON_NEGATIVE, "weight_decay": arguments.real(0),
                "attribute_loss_weight": arguments.real(0), "grounding_loss_weight": arguments.real(0),
                "time_budget_s": arguments.real(0)}
_CONFIGS = {"vqa": TrainConfig, "match": MatchTrainConfig, "caption": CaptionTrainConfig}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train the model on the scene world (CPU)")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--task", choices=sorted(_CONFIGS), default="vqa",
                        help="vqa: question answering (default); match: image-text matching and search; "
                             "caption: the caption decoder")
    seen: dict[str, list[str]] = {}
    for task, config in _CONFIGS.items():
        for field in fields(config):
            if field.type in _ARG_TYPES:
                seen.setdefault(field.name, []).append(f"{task}: {field.default}")
    types = {f.name: f.type for config in _CONFIGS.values() for f in fields(config)}
    for name, defaults in seen.items():
        # SUPPRESS: only what is given reaches the config, so each task keeps its own defaults.
        parser.add_argument(f"--{name.replace('_', '-')}", type=_FIELD_TYPES.get(name, _ARG_TYPES[types[name]]),
                            default=argparse.SUPPRESS, help="default " + ", ".join(defaults))
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    check_output("--out", args.out, directory=True)
    config_class = _CONFIGS[args.task]
    known = {f.name for f in fields(config_class)}
    given = {name for name in vars(args) if any(name in {f.name for f in fields(c)} for c in _CONFIGS.values())}
    if given - known:
        option = "--" + sorted(given - known)[0].replace("_", "-")
        raise InputError(option, f"a setting of --task {args.task}", "a setting of another task")
    config = config_class(**{name: getattr(args, name) for name in given})
    if args.task == "match":
        from fusionrt.train_match import train_match

        metrics = train_match(config, args.out)
        keys = [k for k in metrics if k not in ("train_config", "loss_every_10_steps")]
    elif args.task == "caption":
        from fusionrt.train_caption import train_caption

        metrics = train_caption(config, args.out)
        keys = ["exact_match", "heldout_scenes", "train_seconds", "total_seconds", "parameters"]
    else:
        from fusionrt.train import train

        metrics = train(config, args.out)
        keys = ["accuracy", "per_kind", "train_seconds", "parameters"]
    print(json.dumps({k: metrics[k] for k in keys}, indent=2))
    return 0
