"""The flags that name a user's own model and data: ``--model FILE.py:FACTORY``, its dims, ``--heldout DIR``."""

from __future__ import annotations

import argparse
from typing import Any

from fusionrt.errors import InputError

DIMS = ("vocab_size", "visual_dim", "max_text_len", "max_visual_len")
MODEL_HELP = ("your fusion module: FILE.py:FACTORY or package.module:FACTORY; FACTORY() returns the torch.nn.Module "
              "(the file is imported and run: name only code you trust)")


def add_model_argument(parser: argparse.ArgumentParser, help_text: str = MODEL_HELP) -> None:
    parser.add_argument("--model", default=None, metavar="REF", help=help_text)


def add_dim_arguments(parser: argparse.ArgumentParser) -> None:
    """--vocab-size, --visual-dim, --max-text-len, --max-visual-len (required with --model)."""
    group = parser.add_argument_group("dims of --model (each required with it)")
    group.add_argument("--vocab-size", type=int, default=None, help="token ids are in [0, N)")
    group.add_argument("--visual-dim", type=int, default=None, help="width of each visual feature vector")
    group.add_argument("--max-text-len", type=int, default=None, help="largest T")
    group.add_argument("--max-visual-len", type=int, default=None, help="largest M")


def add_heldout_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--heldout", default=None, metavar="DIR",
                        help="held-out npz feeds of a custom bundle (keys: the graph's inputs, optional int "
                             "'labels' per row): budgets and parity are measured on them")


def dims_from(args: argparse.Namespace) -> dict[str, Any]:
    """The dims given with --model, all of them; :class:`InputError` naming the first flag missing."""
    for dim in DIMS:
        if getattr(args, dim) is None:
            raise InputError(f"--{dim.replace('_', '-')}", "a positive integer (required with --model)", "nothing")
    return {dim: getattr(args, dim) for dim in DIMS}
