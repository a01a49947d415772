"""Helper of benchmarks/gpu_check.sh: every step of the GPU check, each recorded in one JSON file.

Steps (each one's status, seconds and output go to the JSON; a failed step does not stop the others):
probe (cuda-python device, torch CUDA, TensorRT) -> bundle (fusionrt export / calibrate / quantize fp16, int8)
-> build + parity per precision (fusionrt build, fusionrt parity --candidate tensorrt) -> benchmark.

Benchmarks: median milliseconds per call, numpy in and numpy out for every engine (the Session API; torch
gets the same host<->device copies), B in {1, 8, 32} at T=16, M=8; each engine timed in blocks of
consecutive calls with a short pause between blocks, engines taking turns block by block; ratios are
against PyTorch eager fp32 measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# Run as a script from any directory: the repository root must be importable even without an install.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BATCHES = (1, 8, 32)
TEXT, VISUAL = 16, 8
BLOCKS, CALLS_PER_BLOCK, WARMUP, PAUSE_S = 5, 20, 10, 0.05
PRECISIONS = ("fp32", "fp16", "int8")
# parity tolerances per precision (fp32: TF32 stays off in Polygraphy's CreateConfig)
TOLERANCES = {"fp32": ("1e-3", "0.9999", "0.99"), "fp16": ("5e-2", "0.999", "0.98"), "int8": ("2e-1", "0.99", "0.95")}
START = time.perf_counter()


def say(text: str) -> None:
    print(f"gpu_check: {text}", file=sys.stderr, flush=True)


def over_budget() -> bool:
    return time.perf_counter() - START > float(os.environ.get("GPU_CHECK_BUDGET_S", "450"))


def fusionrt(*args: str, timeout: float = 600) -> dict[str, Any]:
    """Run one ``fusionrt`` command; its exit code, time and the tail of its output."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "fusionrt", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    record = {"command": "fusionrt " + " ".join(args), "exit": done.returncode,
              "seconds": round(time.perf_counter() - start, 1), "output": (done.stdout + done.stderr)[-2000:]}
    say(f"{record['command']}: exit {done.returncode} in {record['seconds']} s")
    return record


def probe() -> dict[str, Any]:
    facts: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        from fusionrt.runtime.backends.tensorrt.device import cuda_device

        facts["cuda_device"] = cuda_device().to_dict()
    except Exception as exc:  # no cuda-python, no driver, no device: all mean "no device for TensorRT"
        facts["cuda_device"] = None
        facts["cuda_device_error"] = str(exc)
    try:
        import torch

        facts["torch"] = torch.__version__
        facts["torch_cuda"] = torch.cuda.is_available()
        if facts["torch_cuda"]:
            facts["torch_device"] = torch.cuda.get_device_name(0)
    except ImportError as exc:
        facts["torch"], facts["torch_cuda"] = None, False
        facts["torch_error"] = str(exc)
    try:
        from fusionrt.engine.build import require_build_environment

        facts["tensorrt"] = require_build_environment().tensorrt_version
    except Exception as exc:
        facts["tensorrt"] = None
        facts["tensorrt_missing"] = str(exc)
    return facts


def make_bundle(work: Path, steps: list[dict[str, Any]]) -> Path:
    bundle = work / "bundle"
    steps.append(fusionrt("export", "--out", str(bundle), "--max-batch", str(max(BATCHES)), "-q"))
    steps.append(fusionrt("calibrate", str(bundle), "-q"))
    for precision in ("fp16", "int8"):
        steps.append(fusionrt("quantize", str(bundle), "--precision", precision, "-q"))
    return bundle


def bundle_precisions(bundle: Path) -> list[str]:
    from fusionrt.runtime import Bundle

    have = Bundle.open(bundle).graph("fusion").precisions
    return [p for p in PRECISIONS if p in have]


def build_and_parity(bundle: Path, precisions: list[str], steps: list[dict[str, Any]]) -> list[str]:
    built = []
    for precision in precisions:
        if over_budget():
            steps.append({"command": f"build/parity {precision}", "skipped": "time budget spent"})
            continue
        step = fusionrt("build", str(bundle), "--precision", precision, "-q")
        steps.append(step)
        if step["exit"] != 0:
            continue
        built.append(precision)
        atol, cosine, agreement = TOLERANCES[precision]
        report = bundle.parent / f"parity.{precision}.json"
        step = fusionrt("parity", str(bundle), "--reference", "torch", "--candidate", "tensorrt",
                        "--candidate-precision", precision, "--scenes", "200", "--atol", atol,
                        "--min-cosine", cosine, "--min-agreement", agreement, "--json", str(report), "-q")
        if report.is_file():
            step["report"] = json.loads(report.read_text())
        steps.append(step)
    return built


def time_blocks(engines: dict[str, Any], feed: dict[str, np.ndarray]) -> dict[str, float]:
    """Median ms per call of each engine: warm-up, then blocks of consecutive calls, engines taking turns."""
    times: dict[str, list[float]] = {name: [] for name in engines}
    for fn in engines.values():
        for _ in range(WARMUP):
            fn(feed)
    names = list(engines)
    for block in range(BLOCKS):
        for name in names[block % len(names):] + names[:block % len(names)]:
            time.sleep(PAUSE_S)
            fn = engines[name]
            for _ in range(CALLS_PER_BLOCK):
                start = time.perf_counter_ns()
                fn(feed)
                times[name].append((time.perf_counter_ns() - start) / 1e6)
    return {name: round(statistics.median(ms), 4) for name, ms in times.items()}


def torch_engines(bundle: Path) -> dict[str, Any]:
    import torch

    from fusionrt.runtime import Bundle
    from fusionrt.runtime.backends.pytorch import load_source_module

    module = load_source_module(Bundle.open(bundle), "fusion").eval().cuda()
    names = ("input_ids", "text_mask", "visual_feats", "visual_mask")

    def make(half: bool):
        def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=half):
                args = [torch.from_numpy(feed[n]).cuda(non_blocking=False) for n in names]
                return [t.float().cpu().numpy() for t in module(*args)]
        return run

    return {"torch eager fp32": make(False), "torch eager fp16 (autocast)": make(True)}


def benchmark(bundle: Path, trt_precisions: list[str]) -> dict[str, Any]:
    from fusionrt.parity import fusion_feed
    from fusionrt.runtime import Bundle, Session

    graph = Bundle.open(bundle).graph("fusion")
    engines = torch_engines(bundle)
    sessions = []
    for precision in trt_precisions:
        for graphs in (False, True):
            session = Session(bundle, backend="tensorrt", precision=precision, cuda_graphs=graphs, max_contexts=1)
            sessions.append(session)
            engines[f"tensorrt {precision}{' + CUDA graphs' if graphs else ''}"] = session.run
    rows = {}
    for batch in BATCHES:
        if over_budget():
            rows[f"B={batch}"] = {"skipped": "time budget spent"}
            continue
        feed = fusion_feed(graph, batch, TEXT, VISUAL, np.random.default_rng(batch))
        ms = time_blocks(engines, feed)
        base = ms["torch eager fp32"]
        rows[f"B={batch}"] = {"ms": ms, "speedup_vs_torch_fp32": {k: round(base / v, 3) for k, v in ms.items()}}
        say(f"B={batch}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items()))
    for session in sessions:
        session.close()
    return {"T": TEXT, "M": VISUAL, "blocks": BLOCKS, "calls_per_block": CALLS_PER_BLOCK, "rows": rows}


def plot(benchmark_result: dict[str, Any], out: Path) -> Path | None:
    """Speed-up over PyTorch eager fp32 per engine and batch, as a grouped bar chart (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = {b: r["speedup_vs_torch_fp32"] for b, r in benchmark_result["rows"].items() if "speedup_vs_torch_fp32" in r}
    if not rows:
        return None
    engines = list(next(iter(rows.values())))
    width = 0.8 / len(engines)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    for i, engine in enumerate(engines):
        xs = [j + i * width for j in range(len(rows))]
        ax.bar(xs, [r[engine] for r in rows.values()], width, label=engine)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))], list(rows))
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_ylabel("speed-up over PyTorch eager fp32 (x)")
    ax.set_title(f"fusion model, T={benchmark_result['T']}, M={benchmark_result['M']}, numpy in/out")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over the bars
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="benchmarks/gpu_check.json")
    args = parser.parse_args()
    from fusionrt.io import atomic_write_json

    result: dict[str, Any] = {"probe": probe(), "steps": []}
    facts = result["probe"]
    if facts["cuda_device"] is None and not facts["torch_cuda"]:
        say(f"no CUDA device on this machine ({facts.get('cuda_device_error', 'torch sees none')}); "
            "nothing to check, exiting")
        result["skipped"] = "no CUDA device"
        atomic_write_json(args.out, result)
        return 0
    if facts["tensorrt"] is None:
        say(f"TensorRT steps skipped: {facts['tensorrt_missing']}")
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as tmp:
        bundle = make_bundle(Path(tmp), result["steps"])
        precisions = bundle_precisions(bundle)
        built = build_and_parity(bundle, precisions, result["steps"]) if facts["tensorrt"] else []
        result["tensorrt_built"] = built
        if facts["torch_cuda"]:
            result["benchmark"] = benchmark(bundle, built)
            png = plot(result["benchmark"], Path(args.out).with_suffix(".png"))
            if png is not None:
                say(f"plotted {png}")
        else:
            say("torch has no CUDA: benchmark skipped")
    result["seconds"] = round(time.perf_counter() - START, 1)
    atomic_write_json(args.out, result)
    say(f"wrote {args.out} in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
