"""Memory soak: many Session calls of varying shapes at B=1; resident memory after warm-up must stay flat.

Each call gets a feed of another shape (T and M cycle), as a server would see. Resident memory (VmRSS) is
sampled after warm-up and every ``sample_every`` calls; the verdict is the growth from after warm-up to the end
(a leak of 100 bytes per call shows as 2 MB over 20,000 calls).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.bundle.manifest import Bundle
from fusionrt.bundle.spec import FUSION
from fusionrt.errors import InputError
from fusionrt.parity.grid import fusion_feed
from fusionrt.progress import SILENT, Progress
from fusionrt.runtime.session import Session

MAX_GROWTH = 0.05  # the soak's gate: RSS growth after warm-up


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def soak(bundle: str | Path | Bundle, calls: int = 20_000, warmup: int = 1_000, *, backend: str = "onnxruntime",
         precision: str = "fp32", threads: int | None = 1, sample_every: int = 1_000,
         progress: Progress = SILENT) -> dict[str, Any]:
    """Run ``warmup`` then ``calls`` fusion calls at B=1 on ``backend``/``precision``; RSS figures and timing."""
    if calls < 1 or warmup < 0 or sample_every < 1:
        raise InputError("soak", "calls >= 1, warm-up >= 0 and sample interval >= 1",
                         f"calls={calls}, warmup={warmup}, sample_every={sample_every}")
    options = {"threads": threads} if threads is not None and backend != "torch" else {}
    with Session(bundle, backend, FUSION, precision, **options) as session:
        spec = session.runner.graph
        rng = np.random.default_rng(0)
        max_t, max_m = spec.dims["T"].max, spec.dims["M"].max
        feeds = [fusion_feed(spec, 1, 1 + k % max_t, 1 + (k * 7) % max_m, rng) for k in range(64)]
        with progress.phase("soak warm-up", total=warmup, unit="call") as bar:
            for k in range(warmup):
                session.run(feeds[k % len(feeds)])
                bar.update(1)
        start_rss = rss_bytes()
        samples = [start_rss]
        started = time.perf_counter()
        with progress.phase("soak", total=calls, unit="call") as bar:
            for k in range(calls):
                session.run(feeds[k % len(feeds)])
                if (k + 1) % sample_every == 0:
                    samples.append(rss_bytes())
                bar.update(1)
        seconds = time.perf_counter() - started
    end_rss = rss_bytes()
    growth = (end_rss - start_rss) / start_rss
    return {"backend": backend, "precision": precision, "calls": calls, "warmup": warmup,
            "seconds": round(seconds, 2), "calls_per_second": round(calls / seconds, 1),
            "rss_after_warmup": start_rss, "rss_end": end_rss, "rss_max": max(samples), "rss_growth": growth,
            "rss_max_growth": (max(samples) - start_rss) / start_rss, "max_growth": MAX_GROWTH,
            "passed": growth < MAX_GROWTH, "samples_mib": [round(s / 2**20, 2) for s in samples]}


def soak_line(result: dict[str, Any]) -> str:
    """One line: the verdict and the RSS figures."""
    verdict = "PASS" if result["passed"] else "FAIL"
    return (f"{verdict}: RSS {result['rss_after_warmup'] / 2**20:.1f} MiB after warm-up -> "
            f"{result['rss_end'] / 2**20:.1f} MiB after {result['calls']} calls on {result['backend']} "
            f"{result['precision']} ({100 * result['rss_growth']:+.2f}%, max {100 * result['rss_max_growth']:+.2f}%;"
            f" gate < {100 * result['max_growth']:g}%)")
