"""The pipeline issue's speed targets, each a ratio measured in one run (``fusionrt.bench.run_bench``).

    .venv/bin/python benchmarks/bench_targets.py [--bundle runs/bundle] [--runs 30] [--threads 2]

1. Shipped model (the pipeline's bundle: every precision there met its accuracy budget): best precision
   vs PyTorch eager fp32 at B=1 (1/16/8) and B=8 (8/32/8). Targets >= 3x and >= 2x.
2. ``base`` preset (random weights): ORT fp32 at B=8 T=32 M=16 as a fraction of the large-GEMM fp32 rate
   measured in the same run (target >= 85%), and int8-cpu vs ORT fp32 at B=8 (target >= 2x). The base
   int8-cpu graph is written from minmax ranges over random fusion feeds (speed only; accuracy needs
   trained weights).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from fusionrt.bench import BenchConfig, bench_feed, format_table, run_bench
from fusionrt.bundle.transaction import update_manifest
from fusionrt.calibration import CPU, collect_ranges, write_qdq
from fusionrt.data.tokenizer import train_tokenizer
from fusionrt.export import export_onnx
from fusionrt.model import FusionModel, preset
from fusionrt.runtime import Bundle


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def base_bundle(work: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    config = preset("base", vocab_size=train_tokenizer().get_vocab_size(), visual_dim=69, num_answers=22)
    model = FusionModel(config).eval()
    log("exporting the base preset (random weights)")
    path = export_onnx(model, work / "base", vocab_size=config.vocab_size, visual_dim=69,
                       max_text_len=config.max_text_len, max_visual_len=config.max_visual_len)
    bundle = Bundle.open(path)
    feeds = [bench_feed(bundle, 8, t, m) for t, m in ((8, 4), (16, 8), (32, 16), (24, 12))]
    log("base int8-cpu graph (minmax ranges over random feeds)")
    ranges = collect_ranges(path / "fusion.onnx", feeds, "minmax")
    write_qdq(path / "fusion.onnx", path / "fusion.int8-cpu.onnx", ranges, CPU)
    update_manifest(path, files=["fusion.int8-cpu.onnx"], precisions={"fusion": {"int8-cpu": "fusion.int8-cpu.onnx"}})
    return path, model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("runs/bundle"), help="the pipeline's bundle")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"$ {' '.join(['python', *sys.argv])}")
    log(f"shipped model: {args.bundle}")
    shipped = run_bench(args.bundle, BenchConfig(shapes=[(1, 16, 8), (8, 32, 8)], runs=args.runs,
                                                 threads=args.threads, app=False))
    print(format_table(shipped))
    for shape in ((1, 16, 8), (8, 32, 8)):
        rows = [r for r in shipped["rows"] if tuple(r["shape"]) == shape and r["backend"] != "torch"]
        best = max(rows, key=lambda r: r["speedup_vs_torch"] or 0)
        print(f"TARGET shipped B={shape[0]}: best {best['backend']} {best['precision']} "
              f"{best['speedup_vs_torch']:.2f}x PyTorch eager fp32 (target {3 if shape[0] == 1 else 2}x)")
    with tempfile.TemporaryDirectory(prefix="bench-targets-") as tmp:
        path, model = base_bundle(Path(tmp))
        base = run_bench(path, BenchConfig(shapes=[(8, 32, 16), (1, 16, 8)], runs=args.runs, threads=args.threads,
                                           app=False, torch_options={"module": model}))
    print(format_table(base))
    row = {(r["precision"], tuple(r["shape"])): r for r in base["rows"] if r["backend"] == "onnxruntime"}
    fp32, int8 = row[("fp32", (8, 32, 16))], row[("int8-cpu", (8, 32, 16))]
    print(f"TARGET base fp32 8/32/16: {fp32['achieved_flops'] / 1e9:.1f} GFLOP/s = "
          f"{100 * fp32['fraction_of_measured_peak']:.0f}% of the large-GEMM rate "
          f"{base['peaks']['measured_fp32_flops'] / 1e9:.1f} GFLOP/s measured in the same run (target 85%); "
          f"{100 * fp32['fraction_of_paper_peak']:.0f}% of the paper peak")
    print(f"TARGET base int8-cpu 8/32/16: {fp32['p50_ms'] / int8['p50_ms']:.2f}x ORT fp32 (target 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
