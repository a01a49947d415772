"""``fusionrt triton BUNDLE --out REPO``: a Triton model repository (answer, caption or embed_text + match)."""

from __future__ import annotations

import argparse

from fusionrt.cli import arguments
from fusionrt.cli.output import check_output
from fusionrt.progress import progress_for
from fusionrt.serve import RepositoryOptions, write_repository
from fusionrt.serve.repository import BACKENDS, DEFAULT_QUEUE_DELAY_US


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("triton", help="write a Triton Inference Server model repository from a bundle")
    parser.add_argument("bundle", help="bundle directory written by `fusionrt export`")
    parser.add_argument("--out", required=True, help="repository directory (replaced if fusionrt wrote it)")
    parser.add_argument("--backend", default="python", choices=BACKENDS,
                        help="fusion model backend: python (runs here, on onnxruntime), onnxruntime or tensorrt "
                             "(for the NGC Triton container)")
    parser.add_argument("--precision", default="fp32", help="fusion graph precision as the bundle lists it")
    parser.add_argument("--max-batch", type=arguments.POSITIVE, default=None,
                        help="Triton max_batch_size (default: the bundle's batch limit)")
    parser.add_argument("--instances", type=arguments.POSITIVE, default=1, help="instances of each model (default 1)")
    parser.add_argument("--queue-delay-us", type=arguments.integer(-1), default=DEFAULT_QUEUE_DELAY_US,
                        help=f"dynamic batching queue delay (default {DEFAULT_QUEUE_DELAY_US}); "
                             "-1 turns dynamic batching off")
    parser.add_argument("--plan", default=None,
                        help="TensorRT engine of the fusion graph for --backend tensorrt (one profile per instance)")
    parser.add_argument("--answer-calls", default="bls", choices=("bls", "local"),
                        help="answer, embed_text and match models: call the graph models (bls, default) or run "
                             "their graphs in their own process (local)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    check_output("--out", args.out, directory=True)
    options = RepositoryOptions(
        backend=args.backend, precision=args.precision, max_batch=args.max_batch, instances=args.instances,
        queue_delay_us=None if args.queue_delay_us < 0 else args.queue_delay_us, plan=args.plan,
        answer_calls=args.answer_calls)
    out = write_repository(args.bundle, args.out, options, progress=progress_for(args.quiet))
    models = sorted(p.parent.name for p in out.glob("*/config.pbtxt"))
    print(f"wrote {out}: models {', '.join(models)} (graph models: {options.backend} backend)")
    return 0
