"""``fusionrt parity BUNDLE``: compare two backends or precisions under gates that fit the candidate's precision.

Exit status 0 when every gate held, 1 when one broke, 2 for bad usage or input.
"""

from __future__ import annotations

import argparse

from fusionrt.bundle import Bundle
from fusionrt.cli import arguments
from fusionrt.cli.model_args import add_heldout_argument, add_model_argument
from fusionrt.cli.output import STDOUT, add_json_option, write_json
from fusionrt.errors import InputError
from fusionrt.io import atomic_write_json, json_safe
from fusionrt.parity import gates_for, run_parity
from fusionrt.parity.caption import CAPTION_BACKENDS, caption_parity, format_caption_parity
from fusionrt.parity.gates import EVERY_OUTPUT, PRECISIONS
from fusionrt.parity.heldout import FeedHeldout
from fusionrt.parity.match import MATCH_TASK, format_match_parity, match_budget, match_parity
from fusionrt.progress import progress_for
from fusionrt.runtime.session import BACKENDS

# Exit status when the comparison ran but a gate broke (2 is for errors, see fusionrt.cli.main).
EXIT_TOLERANCE_EXCEEDED = 1
PER_OUTPUT = "[OUTPUT:]VALUE"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "parity", help="compare two backends (or precisions) of a bundle; gates default to the candidate's precision",
        description="Gates default to the candidate precision's: fp32 max abs 1e-4, cosine 0.9999, agreement 0.99; "
                    "fp16/bf16/int8/int8-cpu the accuracy budget recorded in the manifest plus finite outputs and a "
                    "measured cosine floor. Every gate flag given overrides its default. Exit 0 passed, 1 a gate "
                    "broke, 2 bad usage or input.")
    parser.add_argument("bundle", help="bundle directory")
    parser.add_argument("--reference", default="torch", choices=sorted(BACKENDS), help="default torch")
    parser.add_argument("--candidate", default="onnxruntime", choices=sorted(BACKENDS), help="default onnxruntime")
    parser.add_argument("--reference-precision", default="fp32", choices=PRECISIONS, help="default fp32")
    parser.add_argument("--candidate-precision", default="fp32", choices=PRECISIONS,
                        help="default fp32; picks the default gates")
    parser.add_argument("--scenes", type=arguments.NON_NEGATIVE, default=200,
                        help="held-out scenes to compare on (0: grid only)")
    parser.add_argument("--checkpoint", default=None,
                        help="where the source checkpoint is now, for the torch backend (default: as recorded)")
    parser.add_argument("--atol", nargs="+", default=None, metavar=PER_OUTPUT,
                        help="max abs error, for every output or per output (e.g. --atol 1e-3 hidden:1e-2)")
    parser.add_argument("--rtol", nargs="+", default=None, metavar=PER_OUTPUT,
                        help="max rel error; with --atol an output fails only when both are exceeded (Polygraphy's "
                             "--check-error-stat max)")
    parser.add_argument("--min-cosine", nargs="+", default=None, metavar=PER_OUTPUT,
                        help="smallest cosine, for every output or per output")
    parser.add_argument("--min-agreement", type=float, default=None, help="argmax agreement on scenes")
    parser.add_argument("--max-drop-points", type=float, default=None,
                        help="largest task accuracy drop on scenes, in percentage points")
    parser.add_argument("--queries", type=arguments.POSITIVE, default=100,
                        help="a match bundle: held-out queries (--scenes is the database size; default 100)")
    parser.add_argument("--rerank", type=arguments.POSITIVE, default=128,
                        help="a match bundle: first-stage candidates each query re-ranks (default 128)")
    parser.add_argument("--seed", type=arguments.SEED, default=0, help="seed of the grid's random feeds")
    add_model_argument(parser, "the torch backend's module: a model reference (FILE.py:FACTORY) given again, e.g. "
                       "when its file changed since export (default: as recorded in the manifest)")
    add_heldout_argument(parser)
    add_json_option(parser, "the full report (every grid point)")
    parser.set_defaults(handler=run)


def per_output(flag: str, values: list[str]) -> dict[str, str]:
    """``["1e-3", "hidden:1e-2"]`` -> ``{"*": "1e-3", "hidden": "1e-2"}`` (values are checked by gates_for)."""
    out: dict[str, str] = {}
    for value in values:
        output, _, number = value.rpartition(":")
        if ":" in value and not output:
            raise InputError(flag, f"{PER_OUTPUT} (an output name before ':')", repr(value))
        out[output or EVERY_OUTPUT] = number
    return out


def overrides_from(args: argparse.Namespace) -> dict[str, object]:
    """The gates given as flags, in :func:`fusionrt.parity.gates_for`'s form."""
    overrides: dict[str, object] = {}
    for gate, flag in (("max_abs", "atol"), ("max_rel", "rtol"), ("min_cosine", "min_cosine")):
        if getattr(args, flag) is not None:
            overrides[gate] = per_output(f"--{flag.replace('_', '-')}", getattr(args, flag))
    for gate in ("min_agreement", "max_drop_points"):
        if getattr(args, gate) is not None:
            overrides[gate] = getattr(args, gate)
    return overrides


def check_output_names(overrides: dict[str, object], outputs: set[str]) -> None:
    """A per-output gate on a name no graph has would gate nothing and pass: refuse it."""
    for gate, flag in (("max_abs", "--atol"), ("max_rel", "--rtol"), ("min_cosine", "--min-cosine")):
        unknown = sorted(set(overrides.get(gate, {})) - outputs - {EVERY_OUTPUT})  # type: ignore[arg-type]
        if unknown:
            raise InputError(flag, f"output names of the bundle's graphs {sorted(outputs)}", f"{unknown}")


def run(args: argparse.Namespace) -> int:
    def options(backend: str) -> dict[str, str]:
        if backend != "torch":
            return {}
        return {k: v for k, v in (("checkpoint", args.checkpoint), ("model", args.model)) if v}

    bundle = Bundle.open(args.bundle)
    if bundle.task == "caption":
        return run_caption(args, bundle)
    if bundle.task == MATCH_TASK:
        return run_match(args, bundle, options("torch"))
    overrides = overrides_from(args)
    check_output_names(overrides, {t.name for graph in bundle.graphs.values() for t in graph.outputs})
    gates = gates_for(bundle, args.candidate_precision, overrides)
    # The held-out feeds are compared against fp32 PyTorch (the module the bundle came from), whatever --reference.
    heldout = FeedHeldout(bundle, args.heldout, torch_options=options("torch")) if args.heldout else None
    report = run_parity(
        bundle, args.reference, args.candidate, reference_precision=args.reference_precision,
        candidate_precision=args.candidate_precision, scenes=args.scenes, seed=args.seed, gates=gates,
        reference_options=options(args.reference), candidate_options=options(args.candidate), heldout=heldout,
        progress=progress_for(args.quiet),
    )
    if args.json == STDOUT:
        write_json(STDOUT, json_safe(report.to_dict()))  # stdout holds the JSON alone
    else:
        print(report.table())
        if args.json:
            atomic_write_json(args.json, json_safe(report.to_dict()))
            print(f"wrote {args.json}")
    return 0 if report.passed else EXIT_TOLERANCE_EXCEEDED


def run_caption(args: argparse.Namespace, bundle: Bundle) -> int:
    """A caption bundle: runtime greedy generation vs PyTorch on held-out scenes (fusionrt.parity.caption)."""
    if args.scenes < 1:
        raise InputError("--scenes", "at least 1 held-out scene for a caption bundle", str(args.scenes))
    given = per_output("--atol", args.atol).get(EVERY_OUTPUT) if args.atol else None
    atol = float(given) if given is not None else None
    if args.candidate not in CAPTION_BACKENDS or args.reference != "torch" or args.reference_precision != "fp32":
        raise InputError("--candidate/--reference", f"a candidate among {list(CAPTION_BACKENDS)} against torch fp32 "
                         "for a caption bundle",
                         f"{args.candidate} against {args.reference} {args.reference_precision}")
    report = caption_parity(bundle, scenes=args.scenes, precision=args.candidate_precision,
                            checkpoint=args.checkpoint, max_abs=atol, backend=args.candidate,
                            progress=progress_for(args.quiet))
    print(format_caption_parity(report))
    if args.json:
        atomic_write_json(args.json, json_safe(report))
        print(f"wrote {args.json}")
    return 0 if report["passed"] else EXIT_TOLERANCE_EXCEEDED


def run_match(args: argparse.Namespace, bundle: Bundle, torch_options: dict[str, str]) -> int:
    """A match bundle: ITM logits of --candidate at --candidate-precision vs fp32 PyTorch on a shape grid and on the
    held-out database (--scenes, --queries, --rerank), gated by fusionrt.parity.match.MATCH_BUDGETS; --atol sets the
    grid's max abs, --min-cosine the held-out logit cosine, --max-drop-points the nDCG@10 and AUC drops."""
    if args.reference != "torch" or args.reference_precision != "fp32":
        raise InputError("--reference", "torch fp32 for a match bundle (ITM parity is against PyTorch)",
                         f"{args.reference} {args.reference_precision}")
    if args.scenes == 1:
        raise InputError("--scenes", "0 (grid only) or at least 2 database scenes for a match bundle", "1")
    if args.rerank < 10:  # nDCG@10 ranks ten
        raise InputError("--rerank", "at least 10 candidates per query", str(args.rerank))

    def every(flag: str, values: list[str] | None) -> float | None:
        given = per_output(flag, values).get(EVERY_OUTPUT) if values else None
        return float(given) if given is not None else None

    budget = match_budget(args.candidate_precision, grid_max_abs=every("--atol", args.atol),
                          min_cosine=every("--min-cosine", args.min_cosine),
                          max_ndcg_drop_points=args.max_drop_points, max_auc_drop_points=args.max_drop_points)
    report = match_parity(bundle, args.candidate_precision, args.candidate, scenes=args.scenes,
                          queries=args.queries, rerank=args.rerank, seed=args.seed, budget=budget,
                          torch_options=torch_options, progress=progress_for(args.quiet))
    if args.json == STDOUT:
        write_json(STDOUT, json_safe(report))
    else:
        print(format_match_parity(report))
        if args.json:
            atomic_write_json(args.json, json_safe(report))
            print(f"wrote {args.json}")
    return 0 if report["passed"] else EXIT_TOLERANCE_EXCEEDED
