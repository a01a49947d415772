"""``fusionrt`` command line. Each command lives in its own module with ``register(subparsers)``."""


from __future__ import annotations

import argparse
import importlib
import signal
import sys

from fusionrt import __version__
from fusionrt.cli.arguments import OneLineParser
from fusionrt.cli.output import check_output
from fusionrt.errors import FusionrtError

DESCRIPTION = "Train, export, quantize, run and check a vision-text fusion model (ONNX Runtime, TensorRT)."
EPILOG = """conventions:
  --json OUT   every command that reports JSON writes it to the file OUT ('-' for stdout)
  -q           after a command's name: no progress bars (they are also off when stderr is not a terminal)

exit status:
  0  success
  1  a gate failed: parity past its tolerance, quantize past its accuracy budget (a report is written)
  2  bad usage or bad input: an unknown option, or a fusionrt error (the message names the input,
     what was expected and what was received)"""

COMMAND_MODULES = (
    "fusionrt.cli.render", "fusionrt.cli.ask", "fusionrt.cli.train", "fusionrt.cli.export", "fusionrt.cli.parity",
    "fusionrt.cli.doctor", "fusionrt.cli.calibrate", "fusionrt.cli.quantize", "fusionrt.cli.build",
    "fusionrt.cli.triton", "fusionrt.cli.serve", "fusionrt.cli.tune", "fusionrt.cli.bench", "fusionrt.cli.pipeline",
    "fusionrt.cli.index", "fusionrt.cli.search", "fusionrt.cli.match",
    "fusionrt.cli.caption",
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="fusionrt", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fusionrt {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    # Every command takes -q after its name; progress bars are also off whenever stderr is not a terminal.
    for command in subparsers.choices.values():
        command.add_argument("-q", "--quiet", action="store_true", help="no progress bars on stderr")
    return parser


# Exit status after Ctrl-C: 128 + SIGINT, as shells report it.
EXIT_INTERRUPTED = 130
# Options that name an output file, checked before a command starts its work.
OUTPUT_FILE_OPTIONS = ("json", "junit")


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        print("fusionrt: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:
        for option in OUTPUT_FILE_OPTIONS:
            check_output(f"--{option}", getattr(args, option, None))
        return int(args.handler(args) or 0)
    except FusionrtError as exc:
        print(f"fusionrt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # A file that could not be written or read after the checks (disk full, permissions changed...).
        where = exc.filename if exc.filename is not None else "file system"
        print(f"fusionrt {args.command}: error: {where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # A second Ctrl-C during shutdown would end the process by SIGINT instead of status 130.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # Bundle updates are transactions: an interrupted one leaves the old bundle, so nothing to report.
        print(f"fusionrt {args.command}: interrupted (Ctrl-C)", file=sys.stderr)
        return EXIT_INTERRUPTED
