"""``fusionrt build BUNDLE --precision P``: TensorRT engines of a bundle's graphs, through Polygraphy."""

from __future__ import annotations

import argparse

from fusionrt.bundle.manifest import Bundle
from fusionrt.engine.build import build_engines, require_build_environment
from fusionrt.engine.config import DEFAULT_OPT_LEVEL, BuildOptions
from fusionrt.engine.crosscheck import command_text, polygraphy_command
from fusionrt.progress import progress_for
from fusionrt.runtime.backends.tensorrt.profiles import ShapeProfile, parse_spec


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("build", help="build TensorRT engines of a bundle (needs TensorRT and a GPU)")
    parser.add_argument("bundle", help="bundle directory")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"),
                        help="which graph files to build (precision lives in the ONNX graph)")
    parser.add_argument("--graph", action="append", default=None,
                        help="build only this graph (repeatable; default: every graph with the precision)")
    parser.add_argument("--profiles", action="append", default=[], metavar="SPEC",
                        help="one optimization profile, e.g. B=1:1:8 (repeat for shape buckets, e.g. "
                             "--profiles B=1:1:8 --profiles B=9:16:32); dims not named keep the manifest's range")
    parser.add_argument("--workspace-mb", type=int, default=None,
                        help="builder workspace cap (default: 1024 on Jetson and other integrated GPUs, else none)")
    parser.add_argument("--opt-level", type=int, default=None, help="builder optimization level 0-5 (default 3)")
    parser.add_argument("--timing-cache", default=None,
                        help="timing cache file to load and update (default: engines/timing.<gpu>.<trt>.cache)")
    parser.add_argument("--version-compatible", action="store_true",
                        help="engine that newer TensorRT versions can load")
    parser.add_argument("--exclude-lean-runtime", action="store_true",
                        help="with --version-compatible: the engine tensorrt_lean of the same version runs")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    specs = [parse_spec(text) for text in args.profiles]
    options = BuildOptions(
        workspace_mb=args.workspace_mb,
        opt_level=DEFAULT_OPT_LEVEL if args.opt_level is None else args.opt_level,
        timing_cache=args.timing_cache, version_compatible=args.version_compatible,
        exclude_lean_runtime=args.exclude_lean_runtime,
    )
    environment = require_build_environment()  # before anything is read or written
    built = build_engines(args.bundle, args.precision, graphs=args.graph, profile_specs=specs, options=options,
                          progress=progress_for(args.quiet), environment=environment)

    bundle = Bundle.open(args.bundle, verify=False)  # the manifest as the build published it (no re-hash)
    for engine in built:
        e = engine.entry
        print(f"{e.file}: {engine.plan_bytes / 2**20:.1f} MiB, built in {engine.seconds:.1f} s "
              f"(TensorRT {e.tensorrt}, {e.gpu}, compute {e.compute_capability}, profiles "
              f"{'; '.join(', '.join(f'{s}={lo}:{o}:{hi}' for s, (lo, o, hi) in p.items()) for p in e.profiles)})")
        profile = ShapeProfile({s: tuple(r) for s, r in e.profiles[0].items()})
        print(f"  cross-check: {command_text(polygraphy_command(bundle, e.graph, e.precision, profile))}")
    return 0
