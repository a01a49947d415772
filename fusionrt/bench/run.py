"""``run_bench``: latency per backend x precision x shape, PyTorch eager fp32 baseline in the same run,
FLOPs from the graph, achieved fraction of the paper and measured peaks, concurrency and app stages."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.app import BundlePipeline
from fusionrt.bench.cost import graph_cost
from fusionrt.bench.peak import cpu_name, measured_gemm_rate, paper_peak
from fusionrt.bench.timing import concurrent_throughput, latency_stats, time_blocks
from fusionrt.bundle.manifest import VQA_TASK, Bundle
from fusionrt.data.detector import detect_regions
from fusionrt.data.questions import questions_for
from fusionrt.data.world import generate_scene, render, split_seeds
from fusionrt.errors import FusionrtError, InputError
from fusionrt.io import utc_timestamp
from fusionrt.parity.grid import fusion_feed
from fusionrt.progress import SILENT, Progress
from fusionrt.runtime.session import Session

BASELINE = ("torch", "fp32")
DEFAULT_SHAPES = ((1, 16, 8), (8, 32, 16))
SWEEP_SHAPES = (
    *((1, t, 8) for t in (4, 8, 16, 32)),
    *((1, 16, m) for m in (1, 4, 8, 16)),
    *((b, 16, 8) for b in (2, 4, 8, 16, 32)),
)
INT8_PRECISIONS = ("int8", "int8-cpu")


@dataclass
class BenchConfig:
    """What to measure. ``precisions=None``: every precision the bundle lists; ``shapes``: (B, T, M)."""

    backends: Sequence[str] = ("onnxruntime",)
    precisions: Sequence[str] | None = None
    shapes: Sequence[tuple[int, int, int]] = DEFAULT_SHAPES
    sweep: bool = False
    runs: int = 50
    warmup: int = 5
    threads: int | None = None
    concurrency: int = 0
    app: bool = True
    gemm_size: int = 1024
    torch_options: dict[str, Any] = field(default_factory=dict)

    def all_shapes(self) -> list[tuple[int, int, int]]:
        shapes = [tuple(s) for s in self.shapes] + (list(SWEEP_SHAPES) if self.sweep else [])
        return list(dict.fromkeys(shapes))  # type: ignore[arg-type]


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"B,T,M"`` -> (B, T, M); :class:`InputError` naming the text otherwise."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise InputError("--shapes", "B,T,M with three positive integers, e.g. 8,32,16", repr(text))
    return values  # type: ignore[return-value]


def bench_feed(bundle: Bundle, batch: int, text: int, visual: int) -> dict[str, np.ndarray]:
    """A real-looking batch: rows padded differently, no fully masked row (those are parity's job)."""
    spec = bundle.graph("fusion")
    for symbol, size in (("B", batch), ("T", text), ("M", visual)):
        if not spec.dims[symbol].min <= size <= spec.dims[symbol].max:
            raise InputError(f"shape {symbol}", f"within {spec.dims[symbol].describe()} for this bundle", str(size))
    feed = fusion_feed(spec, batch, text, visual, np.random.default_rng(batch * 1000 + text * 10 + visual))
    feed["text_mask"][:, 0] = feed["visual_mask"][:, 0] = True
    return feed


def _torch_available() -> str | None:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        return f"torch not installed ({exc})"
    return None


def _sessions(bundle: Bundle, config: BenchConfig) -> tuple[dict[tuple[str, str], Session], dict[str, str]]:
    precisions = list(config.precisions or bundle.graph("fusion").precisions)
    sessions: dict[tuple[str, str], Session] = {}
    skipped: dict[str, str] = {}
    why_no_torch = _torch_available()
    if why_no_torch is None:
        torch_options = dict(config.torch_options)
        if config.threads is not None:
            import torch

            torch.set_num_threads(config.threads)
        try:
            sessions[BASELINE] = Session(bundle, "torch", "fusion", "fp32", **torch_options)
        except FusionrtError as exc:  # e.g. the source checkpoint moved: no baseline, said in the report
            skipped["torch fp32"] = str(exc)
    else:
        skipped["torch fp32"] = why_no_torch
    for backend in config.backends:
        for precision in precisions:
            if (backend, precision) == BASELINE:
                continue
            if precision not in bundle.graph("fusion").precisions:
                skipped[f"{backend} {precision}"] = "not in this bundle"
                continue
            options = {"threads": config.threads} if backend == "onnxruntime" and config.threads else {}
            try:
                sessions[(backend, precision)] = Session(bundle, backend, "fusion", precision, **options)
            except Exception as exc:  # a backend missing on this machine is a finding, not a crash
                skipped[f"{backend} {precision}"] = f"{type(exc).__name__}: {exc}"
    return sessions, skipped


def measure_peaks(config: BenchConfig) -> dict[str, Any]:
    """Paper peak and large-GEMM rates (fp32 MatMul, u8 x s8 MatMulInteger) on ONNX Runtime, now."""
    paper = paper_peak()
    return {"paper": paper.to_dict(), "gemm_size": config.gemm_size,
            "measured_fp32_flops": measured_gemm_rate("float32", config.gemm_size, threads=config.threads),
            "measured_int8_ops": measured_gemm_rate("int8", config.gemm_size, threads=config.threads)}


def _row(key: tuple[str, str], shape: tuple[int, int, int], times: list[float], cost: dict[str, Any],
         peaks: dict[str, Any], baseline_ms: float | None) -> dict[str, Any]:
    backend, precision = key
    stats = latency_stats(times)
    seconds = stats["p50_ms"] / 1e3
    achieved = cost["flops"] / seconds if seconds else 0.0
    int8 = precision in INT8_PRECISIONS
    measured_peak = peaks["measured_int8_ops"] if int8 else peaks["measured_fp32_flops"]
    paper = peaks["paper"]["int8_ops"] if int8 else peaks["paper"]["fp32_flops"]
    return {"backend": backend, "precision": precision, "shape": list(shape), **stats,
            "samples_per_s": shape[0] / seconds if seconds else 0.0,
            "speedup_vs_torch": (baseline_ms / stats["p50_ms"]) if baseline_ms else None,
            **cost, "achieved_flops": achieved,
            "fraction_of_measured_peak": achieved / measured_peak if measured_peak else None,
            "fraction_of_paper_peak": achieved / paper if paper else None,
            "peak_kind": "int8 GEMM" if int8 else "fp32 GEMM"}


def app_latency(bundle: Bundle, scenes: int = 20, threads: int | None = None) -> dict[str, Any]:
    """End-to-end answering (image -> answer) split into detection, region encoding, tokenization, fusion:
    median milliseconds per stage over ``scenes`` rendered scenes, one question each, through the bundle."""
    import time


    options = {"threads": threads} if threads else {}
    pipeline = BundlePipeline(bundle.path, **options)
    stages: dict[str, list[float]] = {"detection": [], "region_encoding": [], "tokenization": [], "fusion": []}
    totals = []
    seeds = split_seeds("heldout", scenes + 2)
    for i, seed in enumerate(seeds):
        scene = generate_scene(int(seed))
        image = render(scene)
        question = questions_for(scene, np.random.default_rng(int(seed)))[0].text
        marks = [time.perf_counter()]
        regions = detect_regions(image, max_regions=pipeline.max_visual_len)
        marks.append(time.perf_counter())
        feats = pipeline.encode_regions(regions.crops_float(), regions.geometry)
        marks.append(time.perf_counter())
        ids = pipeline.questions.encode(question)[None]
        marks.append(time.perf_counter())
        pipeline.fuse(ids, np.ones_like(ids, dtype=bool), feats[None], np.ones((1, len(regions)), dtype=bool))
        marks.append(time.perf_counter())
        if i < 2:
            continue  # warm-up
        for name, a, b in zip(stages, marks, marks[1:], strict=False):
            stages[name].append((b - a) * 1e3)
        totals.append((marks[-1] - marks[0]) * 1e3)
    medians = {name: float(np.median(v)) for name, v in stages.items()}
    return {"scenes": scenes, "stages_ms": medians, "total_ms": float(np.median(totals))}


def run_bench(bundle: str | Path | Bundle, config: BenchConfig | None = None,
              progress: Progress = SILENT) -> dict[str, Any]:
    """Measure every backend x precision x shape of ``config`` on ``bundle``; return the report dict."""
    config = config or BenchConfig()
    if config.runs < 5:
        raise InputError("runs", "at least 5 timed calls per engine and shape", str(config.runs))
    opened = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    shapes = config.all_shapes()
    for shape in shapes:
        bench_feed(opened, *shape)  # bad shapes fail before anything is loaded or timed
    sessions, skipped = _sessions(opened, config)
    with progress.phase("large GEMM peaks", total=None):
        peaks = measure_peaks(config)
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()[0]
    with progress.phase("latency", total=len(shapes), unit="shape") as bar:
        for shape in shapes:
            feed = bench_feed(opened, *shape)
            cost = graph_cost(opened.graph_path("fusion"), dict(zip("BTM", shape, strict=True))).to_dict()
            candidates = {f"{b} {p}": (lambda s=s, f=feed: s.run(f)) for (b, p), s in sessions.items()}
            times = time_blocks(candidates, config.runs, config.warmup)
            baseline = latency_stats(times["torch fp32"])["p50_ms"] if BASELINE in sessions else None
            for key in sessions:
                rows.append(_row(key, shape, times[f"{key[0]} {key[1]}"], cost, peaks, baseline))
            bar.update(1)
    concurrency = []
    if config.concurrency > 1:
        with progress.phase("concurrency", total=None):
            shape = shapes[0]
            feed = bench_feed(opened, *shape)
            for key, session in sessions.items():
                if key == BASELINE:
                    continue
                calls = max(5, config.runs // config.concurrency)
                single = concurrent_throughput(lambda s=session: s.run(feed), 1, calls * config.concurrency)
                many = concurrent_throughput(lambda s=session: s.run(feed), config.concurrency, calls)
                concurrency.append({"backend": key[0], "precision": key[1], "shape": list(shape),
                                    "one_thread_calls_per_s": single["calls_per_s"],
                                    "threads": config.concurrency, "many_threads_calls_per_s": many["calls_per_s"],
                                    "ratio": many["calls_per_s"] / single["calls_per_s"]})
    app = None
    if config.app and opened.task == VQA_TASK:
        with progress.phase("app stages", total=None):
            app = app_latency(opened, threads=config.threads)
    for session in sessions.values():
        session.close()
    return {
        "bundle": str(opened.path), "created_utc": utc_timestamp(),
        "machine": {"cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
                    "threads": config.threads},
        "method": (f"{config.runs} timed calls per engine and shape after {config.warmup} warm-up calls; engines take "
                   "turns in blocks of 10 consecutive calls with a 50 ms pause before each block"),
        "peaks": peaks, "rows": rows, "skipped": skipped, "concurrency": concurrency, "app": app,
    }


def format_table(report: dict[str, Any]) -> str:
    """Plain-text table of a :func:`run_bench` report."""
    peaks = report["peaks"]
    machine = report["machine"]
    lines = [f"machine: {machine['cpu']}, {machine['cores']} cores; load average "
             f"{machine['load_average_before']:.2f} before, {machine['load_average_after']:.2f} after",
             f"peak fp32: paper {peaks['paper']['fp32_flops'] / 1e9:.1f} GFLOP/s, large GEMM "
             f"{peaks['measured_fp32_flops'] / 1e9:.1f} GFLOP/s; int8: paper {peaks['paper']['int8_ops'] / 1e9:.1f} "
             f"GOP/s, large GEMM {peaks['measured_int8_ops'] / 1e9:.1f} GOP/s",
             f"{'backend':<12} {'prec':<9} {'B/T/M':<10} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'samples/s':>10} "
             f"{'vs torch':>9} {'GFLOP/s':>8} {'of GEMM':>8}"]
    for r in report["rows"]:
        speedup = f"{r['speedup_vs_torch']:.2f}x" if r["speedup_vs_torch"] else "-"
        fraction = f"{100 * r['fraction_of_measured_peak']:.0f}%" if r["fraction_of_measured_peak"] else "-"
        lines.append(f"{r['backend']:<12} {r['precision']:<9} {'/'.join(map(str, r['shape'])):<10} "
                     f"{r['p50_ms']:>9.3f} {r['p90_ms']:>9.3f} {r['p99_ms']:>9.3f} {r['samples_per_s']:>10.1f} "
                     f"{speedup:>9} {r['achieved_flops'] / 1e9:>8.1f} {fraction:>8}")
    for c in report["concurrency"]:
        lines.append(f"concurrency {c['backend']} {c['precision']} {'/'.join(map(str, c['shape']))}: "
                     f"{c['one_thread_calls_per_s']:.1f} calls/s on 1 thread, {c['many_threads_calls_per_s']:.1f} "
                     f"on {c['threads']} threads ({c['ratio']:.2f}x)")
    if report["app"]:
        stages = ", ".join(f"{k} {v:.3f}" for k, v in report["app"]["stages_ms"].items())
        lines.append(f"app (image -> answer) median {report['app']['total_ms']:.3f} ms: {stages} (ms)")
    for name, why in report["skipped"].items():
        lines.append(f"skipped {name}: {why}")
    return "\n".join(lines)
