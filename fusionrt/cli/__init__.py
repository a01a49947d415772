"""``fusionrt`` command line. Each command lives in its own module with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import sys

from fusionrt.errors import FusionrtError

COMMAND_MODULES = (
    "fusionrt.cli.render", "fusionrt.cli.ask", "fusionrt.cli.train", "fusionrt.cli.export", "fusionrt.cli.parity",
    "fusionrt.cli.doctor", "fusionrt.cli.calibrate", "fusionrt.cli.quantize", "fusionrt.cli.bench",
    "fusionrt.cli.pipeline",
)


def build_parser() -> argparse.ArgumentParser:
    from fusionrt import __version__

    parser = argparse.ArgumentParser(prog="fusionrt", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fusionrt {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    # Every command takes -q after its name; progress bars are also off whenever stderr is not a terminal.
    for command in subparsers.choices.values():
        command.add_argument("-q", "--quiet", action="store_true", help="no progress bars on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except FusionrtError as exc:
        print(f"fusionrt {args.command}: error: {exc}", file=sys.stderr)
        return 2
