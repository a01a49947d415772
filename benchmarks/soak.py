"""Soak: many Session calls at B=1 on onnxruntime; resident memory after warm-up must grow < 5%.

    .venv/bin/python benchmarks/soak.py [--bundle DIR] [--calls 20000] [--warmup 1000]

Without ``--bundle`` the shipped checkpoint is exported to a temporary bundle first. Each call gets
a fresh feed of a varying shape (T and M cycle), as a server would see. Resident memory (VmRSS)
is sampled after warm-up and every 1,000 calls; the figure is the growth from after warm-up to the
end, and the largest sample, both relative to after warm-up. A leak of even 100 bytes per call would
show as 2 MB over 20,000 calls.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _feeds(session: Any, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    from fusionrt.parity.grid import fusion_feed

    spec = session.runner.graph
    rng = np.random.default_rng(seed)
    max_t, max_m = spec.dims["T"].max, spec.dims["M"].max
    return [fusion_feed(spec, 1, 1 + k % max_t, 1 + (k * 7) % max_m, rng) for k in range(count)]


def soak(bundle: str | Path, calls: int = 20_000, warmup: int = 1_000, sample_every: int = 1_000) -> dict[str, Any]:
    """Run ``warmup`` then ``calls`` Session calls at B=1; return RSS figures and timing."""
    from fusionrt.runtime import Session

    session = Session(bundle, threads=1)
    feeds = _feeds(session, 64)
    for k in range(warmup):
        session.run(feeds[k % len(feeds)])
    start_rss = rss_bytes()
    samples = [start_rss]
    started = time.perf_counter()
    for k in range(calls):
        out = session.run(feeds[k % len(feeds)])
        if not np.isfinite(out["logits"]).all():
            raise AssertionError(f"non-finite logits at call {k}")
        if (k + 1) % sample_every == 0:
            samples.append(rss_bytes())
    seconds = time.perf_counter() - started
    session.close()
    end_rss = samples[-1] if calls % sample_every == 0 else rss_bytes()
    return {"calls": calls, "warmup": warmup, "seconds": round(seconds, 2),
            "calls_per_second": round(calls / seconds, 1), "rss_after_warmup": start_rss, "rss_end": end_rss,
            "rss_max": max(samples), "rss_growth": (end_rss - start_rss) / start_rss,
            "rss_max_growth": (max(samples) - start_rss) / start_rss, "samples_mib": [round(s / 2**20, 2)
                                                                                       for s in samples]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=1_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle
        if bundle is None:
            from fusionrt.export import export_checkpoint

            bundle = export_checkpoint(None, Path(tmp) / "bundle")
        result = soak(bundle, args.calls, args.warmup)
    print(json.dumps(result, indent=2))
    verdict = "PASS" if result["rss_growth"] < 0.05 else "FAIL"
    print(f"{verdict}: RSS {result['rss_after_warmup'] / 2**20:.1f} MiB after warm-up -> "
          f"{result['rss_end'] / 2**20:.1f} MiB after {result['calls']} calls "
          f"({100 * result['rss_growth']:+.2f}%, max {100 * result['rss_max_growth']:+.2f}%)")


if __name__ == "__main__":
    main()
