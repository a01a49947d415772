"""Choose the fastest backend x precision within budget on this machine and record it for ``precision="auto"``.

Every candidate (each installed CPU backend x each precision the bundle has x, on OpenVINO, each
precision hint) is first measured on held-out scenes against fp32 PyTorch and kept only within its
budget; the survivors are timed on the fusion graph at each batch size (T=16, M=8), in blocks
(:mod:`fusionrt.bench.timing`). The choice minimizes the geometric mean of the medians over the batch
sizes, and is written to the manifest's ``auto`` section (:mod:`fusionrt.runtime.auto`).
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.bench.timing import medians, time_blocks
from fusionrt.bundle.manifest import Bundle
from fusionrt.bundle.transaction import update_manifest
from fusionrt.errors import BackendError
from fusionrt.parity.budgets import BUDGETS, Budget
from fusionrt.parity.grid import fusion_feed
from fusionrt.parity.heldout import HeldoutEvaluator
from fusionrt.progress import SILENT, Progress
from fusionrt.runtime.auto import SECTION, machine_fingerprint
from fusionrt.runtime.cpu import CpuInfo, this_cpu
from fusionrt.runtime.session import Session

CPU_BACKENDS = {"onnxruntime": "onnxruntime", "openvino": "openvino"}  # backend -> the package it needs
OPENVINO_HINTS = ("f32", "bf16")
DEFAULT_BATCHES = (1, 8)
CALLS_PER_BLOCK = 10
TEXT_LEN, VISUAL_LEN = 16, 8
DEFAULT_HELDOUT_SCENES = 200
# fp32 run by another engine: the same function up to summation order; a near-tie may flip.
FP32_BUDGET = Budget(max_drop_points=0.1, min_agreement=0.999)
# BF16 matmuls (8 mantissa bits) with fp32 accumulation: held to the FP16 graph's budget unless one is set.
BF16_BUDGET = BUDGETS.get("bf16", BUDGETS["fp16"])


@dataclass
class Candidate:
    backend: str
    precision: str
    options: dict[str, Any] = field(default_factory=dict)
    ran: dict[str, Any] = field(default_factory=dict)  # what the engine reports it executed
    heldout: dict[str, Any] = field(default_factory=dict)
    ms: dict[str, float] = field(default_factory=dict)
    score_ms: float | None = None
    passed: bool = False
    note: str = ""

    @property
    def label(self) -> str:
        hint = f" {self.options['hint']}" if "hint" in self.options else ""
        return f"{self.backend} {self.precision}{hint}"


def budget_for(precision: str, options: dict[str, Any]) -> Budget:
    """A quantized graph keeps its own budget; a float graph run with BF16 math gets the BF16 one."""
    if precision in BUDGETS:
        return BUDGETS[precision]
    return BF16_BUDGET if options.get("hint") == "bf16" else FP32_BUDGET


def installed_backends() -> list[str]:
    return [b for b, package in CPU_BACKENDS.items() if importlib.util.find_spec(package) is not None]


def list_candidates(bundle: Bundle, backends: Sequence[str] | None = None,
                    precisions: Sequence[str] | None = None) -> list[Candidate]:
    """Every backend x precision (x hint) to try; unknown backend or precision names raise."""
    have = list(bundle.graph("fusion").precisions)
    for name, chosen, allowed in (("backends", backends, installed_backends()), ("precisions", precisions, have)):
        unknown = [c for c in chosen or () if c not in allowed]
        if unknown:
            raise BackendError(name, f"names among {allowed} (installed / in this bundle)", repr(unknown))
    out = []
    for backend in backends or installed_backends():
        for precision in precisions or have:
            if backend == "openvino":
                out.extend(Candidate(backend, precision, {"hint": hint}) for hint in OPENVINO_HINTS)
            else:
                out.append(Candidate(backend, precision))
    return out


def _geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def choose_path(bundle_dir: str | Path, *, backends: Sequence[str] | None = None,
                precisions: Sequence[str] | None = None, batches: Sequence[int] = DEFAULT_BATCHES,
                threads: int | None = None, heldout_scenes: int = DEFAULT_HELDOUT_SCENES,
                evaluator: HeldoutEvaluator | None = None, record: bool = True, blocks: int = 8,
                progress: Progress = SILENT, cpu: CpuInfo | None = None) -> dict[str, Any]:
    """Measure every candidate, pick the fastest within budget, and (``record``) store it in the manifest.

    ``cpu`` is what the CPU reports (default: this one's): a bf16 hint is tried only where it reports BF16, and
    even then only timed where OpenVINO really ran BF16.

    Returns the ``auto`` section: the choice (``backend``, ``precision``, ``options``, ``ms``), ``machine``
    and every ``candidates`` entry with its held-out measurement, timings, and why it was dropped.
    """
    bundle = Bundle.open(bundle_dir)
    started = time.perf_counter()
    candidates = list_candidates(bundle, backends, precisions)
    evaluator = evaluator or HeldoutEvaluator(bundle, heldout_scenes, progress=progress)
    sessions: dict[str, Session] = {}
    cpu = cpu or this_cpu()
    for cand in progress.iterate(candidates, "held-out accuracy", unit="path"):
        if cand.options.get("hint") == "bf16" and not cpu.bf16:
            cand.note = f"bf16 hint skipped: this CPU reports no AVX-512 BF16 or AMX BF16 ({cpu.describe()})"
            continue
        if threads:
            cand.options["threads"] = threads  # recorded with the choice: it was timed with them
        session = Session(bundle, cand.backend, "fusion", cand.precision, **cand.options)
        if "runtime_precision" in (info := session.describe()):
            cand.ran = {"inference_precision": info["inference_precision"],
                        "runtime_precision": info["runtime_precision"]}
            if cand.options.get("hint") == "bf16" and info["inference_precision"] != "bf16":
                cand.note = f"bf16 hint not taken on this CPU (ran {info['inference_precision']})"
                continue
        budget = budget_for(cand.precision, cand.options)
        measurement = evaluator.measure(session.run)
        cand.heldout = {"scenes": evaluator.scenes, **measurement.to_dict(budget)}
        cand.passed = not measurement.failures(budget)
        if cand.passed:
            sessions[cand.label] = session
        else:
            cand.note = "; ".join(measurement.failures(budget))
    if not sessions:
        raise BackendError("candidates", "at least one path within its budget",
                           "; ".join(f"{c.label}: {c.note}" for c in candidates))
    graph = bundle.graph("fusion")
    for batch in progress.iterate(batches, "timing", unit="batch"):
        feed = fusion_feed(graph, batch, TEXT_LEN, VISUAL_LEN, np.random.default_rng(batch))
        feed["text_mask"][:] = True
        feed["visual_mask"][:] = True
        timed = medians(time_blocks({label: (lambda s=s, f=feed: s.run(f)) for label, s in sessions.items()},
                                    runs=blocks * CALLS_PER_BLOCK, warmup=3, block=CALLS_PER_BLOCK))
        for cand in candidates:
            if cand.label in timed:
                cand.ms[str(batch)] = round(timed[cand.label], 4)
    for cand in candidates:
        if cand.label in sessions:
            cand.score_ms = round(_geomean(list(cand.ms.values())), 4)
    best = min((c for c in candidates if c.score_ms is not None), key=lambda c: c.score_ms)
    section = {"backend": best.backend, "precision": best.precision, "options": best.options, "ms": best.ms,
               "score_ms": best.score_ms, "batches": list(batches), "text_len": TEXT_LEN, "visual_len": VISUAL_LEN,
               "threads": threads, "machine": machine_fingerprint(cpu),
               "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "seconds": round(time.perf_counter() - started, 1),
               "candidates": [asdict(c) for c in candidates]}
    for session in sessions.values():
        session.close()
    if record:
        update_manifest(bundle.path, sections={SECTION: section})
    return section
