"""``fusionrt parity BUNDLE``: compare two backends or precisions; non-zero exit when a tolerance is exceeded."""

from __future__ import annotations

import argparse

# Exit status when the comparison ran but a tolerance was exceeded (2 is for errors, see fusionrt.cli.main).
EXIT_TOLERANCE_EXCEEDED = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    from fusionrt.runtime.session import BACKENDS

    parser = subparsers.add_parser("parity", help="compare two backends (or precisions) of a bundle")
    parser.add_argument("bundle", help="bundle directory")
    parser.add_argument("--reference", default="torch", choices=sorted(BACKENDS), help="default torch")
    parser.add_argument("--candidate", default="onnxruntime", choices=sorted(BACKENDS), help="default onnxruntime")
    parser.add_argument("--reference-precision", default="fp32")
    parser.add_argument("--candidate-precision", default="fp32")
    parser.add_argument("--scenes", type=int, default=200, help="held-out scenes to compare on (0: grid only)")
    parser.add_argument("--checkpoint", default=None,
                        help="where the source checkpoint is now, for the torch backend (default: as recorded)")
    parser.add_argument("--atol", type=float, default=1e-4, help="max abs error per output (default 1e-4)")
    parser.add_argument("--min-cosine", type=float, default=0.9999, help="default 0.9999")
    parser.add_argument("--min-agreement", type=float, default=0.99,
                        help="argmax agreement on scenes (default 0.99)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the grid's random feeds")
    parser.add_argument("--json", default=None, metavar="OUT", help="also write the full report as JSON to OUT")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fusionrt.io import atomic_write_json
    from fusionrt.parity import Tolerance, run_parity
    from fusionrt.parity.report import json_safe
    from fusionrt.progress import progress_for

    def options(backend: str) -> dict[str, str]:
        return {"checkpoint": args.checkpoint} if backend == "torch" and args.checkpoint else {}

    report = run_parity(
        args.bundle, args.reference, args.candidate, reference_precision=args.reference_precision,
        candidate_precision=args.candidate_precision, scenes=args.scenes, seed=args.seed,
        tolerance=Tolerance(max_abs=args.atol, min_cosine=args.min_cosine, min_agreement=args.min_agreement),
        reference_options=options(args.reference), candidate_options=options(args.candidate),
        progress=progress_for(args.quiet),
    )
    print(report.table())
    if args.json:
        atomic_write_json(args.json, json_safe(report.to_dict()))
        print(f"wrote {args.json}")
    return 0 if report.passed else EXIT_TOLERANCE_EXCEEDED
