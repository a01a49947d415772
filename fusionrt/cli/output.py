"""``--json OUT`` everywhere: a file path (written atomically), ``-`` for stdout."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from fusionrt.errors import InputError
from fusionrt.io import atomic_write_json

STDOUT = "-"


def add_json_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", default=None, metavar="OUT",
                        help=f"also write {what} as JSON to the file OUT ('-' for stdout)")


def write_json(target: str | None, value: Any) -> bool:
    """Write ``value`` to ``target`` (``-``: stdout); return whether it went to stdout."""
    if target is None:
        return False
    if target == STDOUT:
        print(json.dumps(value, indent=2))
        return True

    atomic_write_json(target, value)
    print(f"wrote {target}", file=sys.stderr)
    return False


def check_output(flag: str, target: str | Path | None, *, directory: bool = False) -> None:
    """Refuse an output path that cannot be written, before any work is done: a directory where a file
    goes (or the reverse), a file where a parent directory goes, a parent that is not writable (read-only
    file system included). :class:`InputError` naming ``flag`` and the path."""
    if target is None or (not directory and str(target) == STDOUT):
        return
    path = Path(target)
    if directory and path.exists() and not path.is_dir():
        raise InputError(flag, "a directory path", f"{path}, which is a file")
    if not directory and path.is_dir():
        raise InputError(flag, "a file path ('-' for stdout)", f"{path}, which is a directory")
    ancestor = path.parent if not (directory and path.is_dir()) else path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(flag, "a path whose parents are directories", f"{path}: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(flag, "a path in a writable directory", f"{path}: {ancestor} is not writable")
