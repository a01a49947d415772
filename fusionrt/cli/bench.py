"""``fusionrt bench BUNDLE``: latency p50/p90/p99 and throughput per backend x precision x shape, PyTorch
eager fp32 measured in the same run as the baseline, achieved fraction of the CPU's peak."""

from __future__ import annotations

import argparse

from fusionrt.bench import DEFAULT_SHAPES, BenchConfig, format_table, parse_shape, run_bench
from fusionrt.bench.soak import soak, soak_line
from fusionrt.bench.tune import choose_path
from fusionrt.cli import arguments
from fusionrt.cli.output import add_json_option, write_json
from fusionrt.cli.tune import table
from fusionrt.io import json_safe
from fusionrt.progress import progress_for
from fusionrt.runtime.session import BACKENDS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="latency test run of a bundle (ratios against PyTorch eager)")
    parser.add_argument("bundle", help="bundle directory")
    parser.add_argument("--backends", nargs="+", default=["onnxruntime"], choices=sorted(BACKENDS),
                        help="backends to time (PyTorch eager fp32 is always timed as the baseline)")
    parser.add_argument("--precisions", nargs="+", default=None,
                        help="precisions to time (default: every precision the bundle lists)")
    parser.add_argument("--shapes", nargs="+", default=None, metavar="B,T,M",
                        help="shapes to time (default 1,16,8 and 8,32,16)")
    parser.add_argument("--sweep", action="store_true", help="also grow T, M and B one at a time")
    parser.add_argument("--runs", type=arguments.POSITIVE, default=50,
                        help="timed calls per engine and shape (default 50)")
    parser.add_argument("--threads", type=arguments.POSITIVE, default=None,
                        help="intra-op threads (default: the backend's)")
    parser.add_argument("--concurrency", type=arguments.NON_NEGATIVE, default=0, metavar="N",
                        help="also measure throughput with N caller threads on one Session")
    parser.add_argument("--no-app", action="store_true", help="skip the end-to-end app latency split")
    parser.add_argument("--auto", action="store_true",
                        help="also pick the fastest backend x precision within budget on this machine and record it "
                             "in the manifest for precision='auto' (what `fusionrt tune` does)")
    parser.add_argument("--soak", type=arguments.NON_NEGATIVE, default=0, metavar="CALLS",
                        help="instead of latency: a memory soak of CALLS fusion calls at B=1 of varying shapes on the "
                             "first backend and precision; exit 1 if resident memory grows 5%% or more after warm-up")
    parser.add_argument("--soak-warmup", type=arguments.NON_NEGATIVE, default=1000, metavar="CALLS",
                        help="soak warm-up calls")
    parser.add_argument("--auto-heldout-scenes", type=arguments.POSITIVE, default=None, metavar="N",
                        help="with --auto: held-out scenes for each path's budget (default: fusionrt tune's)")

    add_json_option(parser, "the full report")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.soak:
        result = soak(args.bundle, args.soak, args.soak_warmup, backend=args.backends[0],
                      precision=(args.precisions or ["fp32"])[0], threads=args.threads or 1,
                      progress=progress_for(args.quiet))
        if not write_json(args.json, json_safe(result)):
            print(soak_line(result))
        return 0 if result["passed"] else 1
    shapes = [parse_shape(s) for s in args.shapes] if args.shapes else list(DEFAULT_SHAPES)
    config = BenchConfig(backends=args.backends, precisions=args.precisions, shapes=shapes, sweep=args.sweep,
                         runs=args.runs, threads=args.threads, concurrency=args.concurrency, app=not args.no_app)
    report = run_bench(args.bundle, config, progress_for(args.quiet))
    if args.auto:
        scenes = {"heldout_scenes": args.auto_heldout_scenes} if args.auto_heldout_scenes else {}
        report["auto"] = choose_path(args.bundle, threads=args.threads, progress=progress_for(args.quiet), **scenes)
    if write_json(args.json, json_safe(report)):
        return 0
    print(format_table(report))
    if args.auto:
        choice = report["auto"]
        print("\n".join(["path choice (recorded in manifest.json 'auto'):", *table(choice)]))
    return 0
