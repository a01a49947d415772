"""Atomic file writes: a temp file in the target's directory, then ``os.replace``."""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.errors import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode ``open``/``mkdir`` would give under the current umask (mkstemp/mkdtemp use 0600/0700)."""
    return (0o777 if directory else 0o666) & ~_umask()


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temp path next to ``target``; on success it replaces ``target``, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # Artifacts are read by other users (a serving account): give them the usual permissions.
    os.chmod(tmp, default_mode())
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(target: str | Path, data: bytes) -> Path:
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(target)


def atomic_write_json(target: str | Path, value: Any) -> Path:
    return atomic_write_bytes(target, (json.dumps(value, indent=2, sort_keys=False) + "\n").encode())


def utc_timestamp() -> str:
    """Now, in UTC to the second (ISO 8601): the time stamp manifests and reports record."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as the strings "inf" / "-inf" / "nan": strict JSON has no Infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def read_npz(path: str | Path) -> dict[str, Any]:
    """The arrays of an npz file, never unpickling objects; :class:`fusionrt.errors.InputError` naming the file
    when it is not an npz of plain arrays."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise InputError(str(path), "an npz file of numeric arrays", f"{type(exc).__name__}: {exc}") from exc
