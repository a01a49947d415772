"""Progress of long commands: one tqdm bar per phase on stderr.

Every long command (export, calibrate, quantize, parity, build, bench, pipeline ...) reports through a
:class:`Progress`. It draws one bar per phase on stderr, and nothing at all when it was made quiet
(``-q``/``--quiet``) or when stderr is not a terminal, so logs and CI output stay clean. Library code
takes a ``Progress`` (default :data:`SILENT`) and never prints on its own.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

T = TypeVar("T")


class _NullBar:
    """What a phase yields when progress is silent: accepts the calls a tqdm bar takes."""

    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str) -> None:
        pass

    def set_description_str(self, text: str) -> None:
        pass


class Progress:
    """One tqdm bar per phase on ``stream`` (stderr), or nothing.

    ``enabled=None`` (the default) draws bars only when ``stream`` is a terminal. ``phase`` yields a
    bar with ``update(n)``; ``iterate`` wraps an iterable; ``note`` writes one line between bars.
    ``timings`` keeps each finished phase's wall time in seconds, drawn or not.
    """

    def __init__(self, enabled: bool | None = None, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str, total: int | None = None, unit: str = "it") -> Iterator[Any]:
        """A bar for one phase named ``name`` (``total`` steps of ``unit``, or unknown)."""
        start = time.perf_counter()
        if not self.enabled:
            yield _NullBar()
        else:
            from tqdm import tqdm

            with tqdm(total=total, desc=name, unit=unit, file=self.stream, dynamic_ncols=True, leave=True) as bar:
                yield bar
        self.timings[name] = time.perf_counter() - start

    def iterate(self, items: Iterable[T], name: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
        """Yield ``items`` while advancing one phase's bar."""
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        with self.phase(name, total, unit) as bar:
            for item in items:
                yield item
                bar.update(1)

    def note(self, text: str) -> None:
        """One line of text on the stream (only when bars are drawn)."""
        if self.enabled:
            from tqdm import tqdm

            tqdm.write(text, file=self.stream)


SILENT = Progress(enabled=False)


def progress_for(quiet: bool = False) -> Progress:
    """The CLI's progress: silent with ``--quiet``, else bars when stderr is a terminal."""
    return Progress(enabled=False) if quiet else Progress()
