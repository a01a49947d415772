"""Timing several engines fairly on a shared CPU: blocks of consecutive calls, engines taking turns.

Alternating single calls is unfair on few cores: ORT's intra-op pool, OpenVINO's and torch's OpenMP
workers keep spinning for a while after a call and slow down whichever engine runs next (measured
+50% to 4x on 2 cores). So each engine runs ``calls_per_block`` calls in a row, after a pause and one
untimed call that wakes its threads, and the engines rotate their order block by block.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

SETTLE_SECONDS = 0.05


def time_in_blocks(calls: Mapping[str, Callable[[], object]], *, blocks: int = 8, calls_per_block: int = 10,
                   warmup: int = 3, settle: float = SETTLE_SECONDS) -> dict[str, list[float]]:
    """Milliseconds of every timed call of each named zero-argument callable."""
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for block in range(blocks):
        shift = block % max(1, len(names))
        for name in names[shift:] + names[:shift]:
            time.sleep(settle)
            calls[name]()  # wakes this engine's threads; not timed
            for _ in range(calls_per_block):
                start = time.perf_counter_ns()
                calls[name]()
                times[name].append((time.perf_counter_ns() - start) / 1e6)
    return times


def medians(times: Mapping[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in times.items()}
