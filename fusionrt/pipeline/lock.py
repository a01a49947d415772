"""One pipeline per bundle directory at a time: an advisory ``fcntl`` lock on a file next to the bundle.

The lock file sits beside the bundle (``.NAME.lock`` in its parent), not inside it, because export
replaces the whole bundle directory. The lock goes with the process: a killed pipeline leaves no stale
lock. It is a different lock from the bundle's own (``fusionrt.bundle.transaction``): that one is held per
update and lives inside the bundle; this one is held for the whole run, across export's replacement of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from fusionrt.errors import InputError


def lock_path(bundle_dir: str | Path) -> Path:
    bundle_dir = Path(bundle_dir).resolve()
    return bundle_dir.parent / f".{bundle_dir.name}.lock"


@contextlib.contextmanager
def bundle_lock(bundle_dir: str | Path) -> Iterator[Path]:
    """Hold the bundle's lock, or raise :class:`InputError` at once naming the process holding it."""
    path = lock_path(bundle_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    except OSError as exc:
        raise InputError("--out", f"a directory where {path.name} can be created", f"{path}: {exc.strerror}") \
            from exc
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise InputError("--out", f"a bundle no other pipeline is writing (lock {path})",
                             f"{bundle_dir} locked by pipeline pid {holder}; wait for it to finish") from exc
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield path
    finally:
        handle.close()  # releases the lock
