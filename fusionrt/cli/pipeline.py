"""``fusionrt pipeline --out BUNDLE``: export, calibrate, fp16/int8, engines, parity, bench, report.

Exit status 0 when every gate passed, 1 when a gate failed (named on stderr and in --junit), 2 for
errors (bad options, a bundle of another checkpoint without --force, a locked bundle, a write error).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fusionrt.cli import arguments
from fusionrt.cli.model_args import DIMS, add_dim_arguments, add_model_argument
from fusionrt.cli.output import check_output
from fusionrt.pipeline import GateFailed, PipelineConfig, run_pipeline, write_junit
from fusionrt.progress import progress_for

EXIT_GATE_FAILED = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("pipeline", help="the main job: checkpoint -> verified, benchmarked bundle + report")
    parser.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the shipped model)")
    parser.add_argument("--out", required=True, help="bundle directory to create or update")
    parser.add_argument("--precisions", default="fp32,fp16,int8", help="comma-separated (default fp32,fp16,int8)")
    parser.add_argument("--calib-method", default="minmax", help="int8 calibration: minmax, percentile or entropy")
    parser.add_argument("--calib-samples", type=arguments.POSITIVE, default=256,
                        help="calibration samples (default 256)")
    parser.add_argument("--backends", default="onnxruntime", help="comma-separated candidate backends")
    parser.add_argument("--heldout-scenes", type=arguments.POSITIVE, default=500,
                        help="held-out scenes for the fp16/int8 accuracy budgets (default 500)")
    parser.add_argument("--parity-scenes", type=arguments.POSITIVE, default=100,
                        help="held-out scenes for parity and per-kind accuracy (default 100)")
    parser.add_argument("--bench-runs", type=arguments.POSITIVE, default=20,
                        help="timed calls per engine and shape (default 20)")
    parser.add_argument("--threads", type=arguments.POSITIVE, default=None, help="intra-op threads for the benchmark")
    parser.add_argument("--skip-bench", action="store_true", help="no benchmark stage")
    parser.add_argument("--junit", default=None, metavar="FILE", help="write one JUnit test case per gate")
    parser.add_argument("--force", action="store_true", help="replace a bundle of another checkpoint at --out")
    add_model_argument(parser, "your own fusion module instead of a checkpoint: FILE.py:FACTORY or "
                       "package.module:FACTORY (imported and run: name only code you trust); needs --calibration, "
                       "--heldout and the dims")
    parser.add_argument("--calibration", default=None, metavar="DIR", help="with --model: calibration npz feeds")
    parser.add_argument("--heldout", default=None, metavar="DIR",
                        help="with --model: held-out npz feeds (optional int 'labels' per row) for the budgets and "
                             "parity")
    parser.add_argument("--match-scenes", type=arguments.POSITIVE, default=5000,
                        help="a matching checkpoint: held-out database scenes for its budgets and parity "
                             "(default 5000)")
    parser.add_argument("--match-queries", type=arguments.POSITIVE, default=500,
                        help="a matching checkpoint: held-out queries (default 500)")
    parser.add_argument("--match-rerank", type=arguments.POSITIVE, default=128,
                        help="a matching checkpoint: first-stage candidates each query re-ranks (default 128)")
    add_dim_arguments(parser)
    parser.add_argument("--max-batch", type=arguments.POSITIVE, default=64,
                        help="with --model: largest batch (default 64)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    check_output("--out", args.out, directory=True)

    def log(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    config = PipelineConfig(
        out=Path(args.out), checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        precisions=tuple(p.strip() for p in args.precisions.split(",") if p.strip()),
        calib_method=args.calib_method, calib_samples=args.calib_samples,
        backends=tuple(b.strip() for b in args.backends.split(",") if b.strip()), skip_bench=args.skip_bench,
        force=args.force, heldout_scenes=args.heldout_scenes, parity_scenes=args.parity_scenes,
        bench_runs=args.bench_runs, threads=args.threads, model=args.model,
        calibration=Path(args.calibration) if args.calibration else None,
        heldout=Path(args.heldout) if args.heldout else None,
        dims={d: getattr(args, d) for d in DIMS if getattr(args, d) is not None}, max_batch=args.max_batch,
        match_scenes=args.match_scenes, match_queries=args.match_queries, match_rerank=args.match_rerank)
    started = time.perf_counter()
    try:
        result = run_pipeline(config, progress_for(args.quiet), log)
    except GateFailed as exc:
        result = exc.result  # type: ignore[attr-defined]
        if args.junit:
            write_junit(args.junit, result.gates)
        print(f"fusionrt pipeline: gate failed: {exc.gate.name}: {exc.gate.message}", file=sys.stderr)
        if exc.gate.details:
            print(exc.gate.details, file=sys.stderr)
        return EXIT_GATE_FAILED
    if args.junit:
        write_junit(args.junit, result.gates)
    total = time.perf_counter() - started
    for gate in result.gates:
        print(f"{gate.status:<8} {gate.name}: {gate.message[:150]}")
    print(f"pipeline finished in {total:.1f} s: {result.bundle}/report.md")
    return 0
