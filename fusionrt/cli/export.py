"""``fusionrt export [--checkpoint DIR | --model REF DIMS] --out BUNDLE``: export and verify a checkpoint (or your
own fusion module) as an ONNX bundle."""

from __future__ import annotations

import argparse

from fusionrt.bundle import Bundle
from fusionrt.bundle.source import checkpoint_task
from fusionrt.cli import arguments
from fusionrt.cli.model_args import add_dim_arguments, add_model_argument, dims_from
from fusionrt.cli.output import add_json_option, check_output, write_json
from fusionrt.errors import InputError
from fusionrt.export import export_checkpoint, export_onnx
from fusionrt.export.caption import CAPTION_TASK, export_caption
from fusionrt.export.match import MATCH_TASK, export_match_checkpoint
from fusionrt.progress import progress_for


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export a checkpoint to a verified ONNX bundle (needs torch, onnx, onnxruntime)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the shipped model)")
    add_model_argument(parser)
    parser.add_argument("--out", required=True, help="bundle directory to write (replaced if it is a bundle)")
    parser.add_argument("--task", default="auto", choices=("auto", "vqa", CAPTION_TASK, MATCH_TASK),
                        help="what the checkpoint does (default: read from its config.json)")
    parser.add_argument("--max-batch", type=arguments.POSITIVE, default=None,
                        help="largest batch the graphs accept (default 64; 256 for a match checkpoint, whose "
                             "re-rank scores many images per query; 16 images for a caption bundle)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--exporter", default="auto", choices=("auto", "legacy", "dynamo"),
                        help="torch.onnx exporter; auto tries the faster (legacy) first, then dynamo")
    parser.add_argument("--atol", type=arguments.real(0), default=1e-4,
                        help="largest ONNX Runtime vs PyTorch abs error allowed on the grid (default 1e-4)")

    add_dim_arguments(parser)
    add_json_option(parser, "the manifest's verification section")
    parser.set_defaults(handler=run)



def run(args: argparse.Namespace) -> int:
    check_output("--out", args.out, directory=True)
    progress = progress_for(args.quiet)
    options = {"opset": args.opset, "exporter": args.exporter, "atol": args.atol, "progress": progress}
    task = checkpoint_task(args.checkpoint) if args.task == "auto" else args.task
    if args.model is not None:
        if args.checkpoint is not None:
            raise InputError("--checkpoint", "either --checkpoint or --model", "both")
        path = export_onnx(args.model, args.out, max_batch=args.max_batch or 64, **dims_from(args), **options)
    elif task == MATCH_TASK:
        path = export_match_checkpoint(args.checkpoint, args.out, max_batch=args.max_batch or 256, **options)
    elif task == CAPTION_TASK:
        options["exporter"] = "legacy" if args.exporter == "auto" else args.exporter
        path = export_caption(args.checkpoint, args.out, max_batch=args.max_batch or 16, **options)
    else:
        path = export_checkpoint(args.checkpoint, args.out, max_batch=args.max_batch or 64, **options)
    manifest = Bundle.open(path).manifest
    verification = manifest["verification"]
    if write_json(args.json, {"bundle": str(path), "exporter": manifest["exporter"], "opset": manifest["opset"],
                              "verification": verification}):
        return 0
    print(f"wrote {path} ({manifest['exporter']} exporter, opset {manifest['opset']}, "
          f"{verification['export_seconds']} s)")
    for name, entry in manifest["files"].items():
        print(f"  {name:<22} {entry['bytes']:>10} bytes  sha256 {entry['sha256'][:16]}")
    for graph, result in verification["graphs"].items():
        worst = ", ".join(f"{out} max abs {m['max_abs']:.2g}" for out, m in result["worst"].items())
        print(f"verified {graph} on {result['points']} shapes: {worst} (tolerance {args.atol:g})")
    return 0
