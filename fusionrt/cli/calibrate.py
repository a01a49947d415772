"""``fusionrt calibrate BUNDLE [--samples N] [--from DIR]``: add a calibration set to a bundle."""

from __future__ import annotations

import argparse
import json

from fusionrt.calibration import calibrate
from fusionrt.calibration.samples import DEFAULT_SAMPLES, MIN_SAMPLES
from fusionrt.cli import arguments
from fusionrt.cli.output import add_json_option, write_json
from fusionrt.progress import progress_for


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("calibrate", help="draw calibration samples from real scenes into a bundle")
    parser.add_argument("bundle", help="bundle directory written by `fusionrt export`")
    parser.add_argument("--samples", type=arguments.POSITIVE, default=DEFAULT_SAMPLES,
                        help=f"questions to draw, one per calibration scene (default {DEFAULT_SAMPLES})")
    parser.add_argument("--from", dest="from_dir", default=None, metavar="DIR",
                        help="use the npz feeds in DIR (keys input_ids, text_mask, visual_feats, visual_mask)")
    parser.add_argument("--min-samples", type=arguments.POSITIVE, default=MIN_SAMPLES, help=f"default {MIN_SAMPLES}")

    add_json_option(parser, "the calibration record")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    progress = progress_for(args.quiet)
    record = calibrate(args.bundle, samples=args.samples, from_dir=args.from_dir, min_samples=args.min_samples,
                       progress=progress)
    if not write_json(args.json, record):
        print(json.dumps(record, indent=2))
    return 0
