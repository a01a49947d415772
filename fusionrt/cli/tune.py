"""``fusionrt tune BUNDLE``: time every CPU backend x precision within budget, record the fastest for ``auto``.

After it, ``Session(bundle, backend="auto", precision="auto")``, ``Answerer(bundle, backend="auto",
precision="auto")`` and ``fusionrt ask --bundle BUNDLE --backend auto --precision auto`` run the choice.
"""

from __future__ import annotations

import argparse

from fusionrt.bench.tune import DEFAULT_BATCHES, DEFAULT_HELDOUT_SCENES, choose_path
from fusionrt.cli import arguments
from fusionrt.cli.output import add_json_option, write_json
from fusionrt.progress import progress_for


def _names(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tune", help="pick the fastest backend x precision within budget (for 'auto')")
    parser.add_argument("bundle", help="bundle directory (quantize it first to have more precisions to try)")
    parser.add_argument("--backends", default=None, help="comma-separated (default: every installed CPU backend)")
    parser.add_argument("--precisions", default=None, help="comma-separated (default: every precision of the bundle)")
    parser.add_argument("--batches", type=arguments.integer_list(), default=",".join(map(str, DEFAULT_BATCHES)),
                        help="batch sizes timed at T=16, M=8; the choice minimizes their geometric mean")
    parser.add_argument("--threads", type=arguments.POSITIVE, default=None,
                        help="engine threads (default: the engines' own)")
    parser.add_argument("--heldout-scenes", type=arguments.POSITIVE, default=DEFAULT_HELDOUT_SCENES,
                        help=f"held-out scenes for each path's budget (default {DEFAULT_HELDOUT_SCENES})")
    parser.add_argument("--no-record", action="store_true", help="measure and print, leave the manifest as it is")

    add_json_option(parser, "the full result")
    parser.set_defaults(handler=run)


def table(section: dict) -> list[str]:
    """One line per candidate: budget result, medians per batch size, and the choice marked."""
    rows = []
    for c in section["candidates"]:
        hint = f" {c['options']['hint']}" if "hint" in c["options"] else ""
        label = f"{c['backend']} {c['precision']}{hint}"
        chosen = c["backend"] == section["backend"] and c["precision"] == section["precision"] and \
            c["options"] == section["options"]
        times = "  ".join(f"B={b} {ms:.3f} ms" for b, ms in c["ms"].items())
        agreement = f"agreement {c['heldout']['agreement']:.4f}" if c["heldout"] else ""
        status = "within budget" if c["passed"] else f"dropped: {c['note']}"
        rows.append(f"{'*' if chosen else ' '} {label:<28} {agreement:<19} {times:<32} {status}")
    return rows


def run(args: argparse.Namespace) -> int:
    batches = args.batches
    section = choose_path(args.bundle, backends=_names(args.backends), precisions=_names(args.precisions),
                          batches=batches, threads=args.threads, heldout_scenes=args.heldout_scenes,
                          record=not args.no_record, progress=progress_for(args.quiet))
    if write_json(args.json, section):
        return 0
    print("\n".join(table(section)))
    where = "not recorded (--no-record)" if args.no_record else "recorded in manifest.json 'auto'"
    print(f"choice: {section['backend']} {section['precision']} {section['options'] or ''} ({where})")
    return 0
