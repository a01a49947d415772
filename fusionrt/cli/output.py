"""``--json OUT`` everywhere: a file path (written atomically), ``-`` for stdout."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fusionrt.io import atomic_write_json


def add_json_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", default=None, metavar="OUT",
                        help=f"also write {what} as JSON to the file OUT ('-' for stdout)")


def write_json(target: str | None, value: Any) -> bool:
    """Write ``value`` to ``target`` (``-``: stdout); return whether it went to stdout."""
    if target is None:
        return False
    if target == "-":
        print(json.dumps(value, indent=2))
        return True

    atomic_write_json(target, value)
    print(f"wrote {target}", file=sys.stderr)
    return False
