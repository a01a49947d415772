"""Latency timing in blocks of consecutive calls, engines taking turns block by block.

Engines are never alternated call by call: on a few cores, ONNX Runtime's intra-op threads and torch's
OpenMP workers keep spinning for a while after a call and slow down whatever runs next (measured
+50% on the second engine, see benchmarks/bench_runtime.py). So each engine runs a block of calls,
then pauses briefly; the rotation order changes every round so no engine always runs first.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

SETTLE_SECONDS = 0.05  # long enough for the previous engine's spinning threads to go to sleep


def latency_stats(times_ms: list[float]) -> dict[str, float]:
    """p50 / p90 / p99 / mean / min of a list of latencies in milliseconds."""
    values = np.asarray(times_ms, dtype=np.float64)
    return {"p50_ms": float(np.percentile(values, 50)), "p90_ms": float(np.percentile(values, 90)),
            "p99_ms": float(np.percentile(values, 99)), "mean_ms": float(values.mean()),
            "min_ms": float(values.min()), "calls": len(values)}


def time_blocks(candidates: Mapping[str, Callable[[], Any]], runs: int, warmup: int = 5,
                block: int = 10, pause: float = SETTLE_SECONDS) -> dict[str, list[float]]:
    """Milliseconds of ``runs`` timed calls per candidate after ``warmup`` untimed ones each.

    Blocks of ``block`` consecutive calls per candidate, candidates in a rotating order, ``pause``
    seconds before each block plus one untimed call to wake the engine's threads.
    """
    names = list(candidates)
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in names}
    rounds = max(1, -(-runs // block))
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            fn = candidates[name]
            time.sleep(pause)
            fn()
            for _ in range(min(block, runs - len(times[name]))):
                start = time.perf_counter_ns()
                fn()
                times[name].append((time.perf_counter_ns() - start) / 1e6)
    return times


def medians(times: Mapping[str, list[float]]) -> dict[str, float]:
    """The median of each candidate's timed calls."""
    return {name: statistics.median(values) for name, values in times.items()}


def concurrent_throughput(fn: Callable[[], Any], threads: int, calls_per_thread: int) -> dict[str, float]:
    """Calls per second with ``threads`` caller threads each making ``calls_per_thread`` calls of ``fn``."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)

    def worker() -> None:
        barrier.wait()
        try:
            for _ in range(calls_per_thread):
                fn()
        except BaseException as exc:  # reported to the caller below
            errors.append(exc)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    return {"threads": threads, "calls": threads * calls_per_thread, "seconds": seconds,
            "calls_per_s": threads * calls_per_thread / seconds}


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    """Median milliseconds of ``runs`` consecutive calls (after one untimed call)."""
    fn()
    values = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        fn()
        values.append((time.perf_counter_ns() - start) / 1e6)
    return statistics.median(values)
