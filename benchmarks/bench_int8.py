"""ORT fp32 vs ORT int8-cpu (U8S8) vs PyTorch eager fp32, on the same inputs, in one run.

    .venv/bin/python benchmarks/bench_int8.py [--runs 50] [--warmup 10] [--threads 2] [--work DIR]

Models: the shipped checkpoint and the ``base`` preset at random weights (vocab 127, visual_dim 69,
22 answers). Both INT8 graphs are written from ranges collected (minmax) over calibration-scene
samples through the shipped model's pre-processing (the base model takes the same inputs). Also
timed, to explain the result: the TensorRT Q/DQ graph (S8S8) on ORT CPU, and a CPU variant that
quantizes MatMul outputs too (QLinearMatMul form). Feeds: real calibration samples padded to the
longest text (12 tokens) and visual set (8 regions), B in {1, 8}. Median of ``runs`` calls after
``warmup``, timed in rotating blocks so one engine's spinning threads do not slow the next.
Prints a markdown table; ``--append`` adds it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fusionrt.calibration import CPU, TENSORRT, calibrate, collect_ranges, load_calibration, write_qdq
from fusionrt.export import export_checkpoint, export_onnx
from fusionrt.model import SHIPPED_CHECKPOINT, FusionModel, load_checkpoint, preset
from fusionrt.progress import progress_for
from fusionrt.runtime import Bundle
from fusionrt.runtime.backends.onnxrt import session_from_onnx

NAMES = ("input_ids", "text_mask", "visual_feats", "visual_mask")
BATCHES = (1, 8)
BLOCK = 5


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def measure(candidates: dict, feed: dict, runs: int, warmup: int) -> dict[str, float]:
    """Median ms per candidate; blocks of BLOCK consecutive calls, candidates in rotating order."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn(feed)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    turn = 0
    while min(len(t) for t in times.values()) < runs:
        order = names[turn % len(names):] + names[:turn % len(names)]
        for name in order:
            for _ in range(BLOCK):
                start = time.perf_counter_ns()
                candidates[name](feed)
                times[name].append((time.perf_counter_ns() - start) / 1e6)
            time.sleep(0.02)
        turn += 1
    return {name: statistics.median(t[:runs]) for name, t in times.items()}


def ort_fn(path: Path, threads: int):
    session = session_from_onnx(path, providers=["CPUExecutionProvider"], threads=threads)
    return lambda feed: session.run(["logits"], feed)


def torch_fn(module):
    def run(feed):
        with torch.inference_mode():
            return module(*(torch.from_numpy(feed[k]) for k in NAMES))
    return run


def feeds(bundle: Bundle) -> dict[int, dict[str, np.ndarray]]:
    data = load_calibration(bundle)
    out = {}
    for batch in BATCHES:
        rows = slice(0, batch)
        text, visual = int(data.text_mask[rows].sum(1).max()), int(data.visual_mask.sum(1).max())
        out[batch] = {"input_ids": np.ascontiguousarray(data.input_ids[rows, :text]),
                      "text_mask": np.ascontiguousarray(data.text_mask[rows, :text]),
                      "visual_feats": np.ascontiguousarray(data.visual_feats[rows, :visual]),
                      "visual_mask": np.ascontiguousarray(data.visual_mask[rows, :visual])}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=None, help="directory for the bundles (default: a temp dir)")
    parser.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-int8-"))
    small_dir = work / "small"
    if not (small_dir / "manifest.json").is_file():
        log("exporting the shipped model")
        export_checkpoint(None, small_dir)
        calibrate(small_dir, progress=progress_for())
    small_bundle = Bundle.open(small_dir)
    shipped = load_checkpoint(SHIPPED_CHECKPOINT).fusion.eval()
    config = preset("base", vocab_size=shipped.config.vocab_size, visual_dim=69, num_answers=22)
    torch.manual_seed(0)
    base = FusionModel(config).eval()
    base_dir = work / "base"
    if not (base_dir / "manifest.json").is_file():
        log("exporting the base preset (random weights)")
        export_onnx(base, base_dir, vocab_size=config.vocab_size, visual_dim=69, max_text_len=config.max_text_len,
                    max_visual_len=config.max_visual_len)
    samples = load_calibration(small_bundle)
    recipes = {"ORT int8-cpu (U8S8)": CPU,
               "ORT int8-cpu, QLinearMatMul form": dataclasses.replace(CPU, quantize_outputs=True),
               "ORT int8 TensorRT graph (S8S8)": TENSORRT}
    rows = []
    for label, module, fp32 in (("shipped small", shipped, small_dir / "fusion.onnx"),
                                ("base (random)", base, base_dir / "fusion.onnx")):
        log(f"{label}: ranges and int8 graphs")
        ranges = collect_ranges(fp32, samples.feeds(), "minmax")
        paths = {}
        for name, recipe in recipes.items():
            paths[name] = work / f"{fp32.parent.name}-{recipe.precision}-{int(recipe.quantize_outputs)}.onnx"
            write_qdq(fp32, paths[name], ranges, recipe)
        candidates = {"torch eager fp32": torch_fn(module), "ORT fp32": ort_fn(fp32, args.threads),
                      **{name: ort_fn(path, args.threads) for name, path in paths.items()}}
        for batch, feed in feeds(small_bundle).items():
            log(f"{label}: timing B={batch}")
            ms = measure(candidates, feed, args.runs, args.warmup)
            shape = f"{batch}/{feed['input_ids'].shape[1]}/{feed['visual_feats'].shape[1]}"
            rows.append((label, shape, ms))
    names = list(rows[0][2])
    lines = [f"| model | B/T/M | {' | '.join(names)} | fp32/int8-cpu |", "|---" * (len(names) + 3) + "|"]
    for label, shape, ms in rows:
        ratio = ms["ORT fp32"] / ms["ORT int8-cpu (U8S8)"]
        lines.append(f"| {label} | {shape} | " + " | ".join(f"{ms[n]:.3f} ms" for n in names) + f" | {ratio:.2f}x |")
    table = "\n".join(lines)
    print(table)
    if args.append:
        import onnxruntime

        header = (f"\n## INT8 on ORT CPU (benchmarks/bench_int8.py)\n\n"
                  f"`.venv/bin/python benchmarks/bench_int8.py --runs {args.runs} --warmup {args.warmup} "
                  f"--threads {args.threads} --append`; {platform.processor() or platform.machine()}, "
                  f"{os.cpu_count()} cores, onnxruntime {onnxruntime.__version__}, torch {torch.__version__}; "
                  f"median of {args.runs} after {args.warmup} warm-up.\n\n")
        with open(Path(__file__).parent / "RESULTS.md", "a") as handle:
            handle.write(header + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
