"""``fusionrt index add DIR --index INDEX`` / ``fusionrt index remove PATH... --index INDEX``: the image index
that ``fusionrt search`` queries (a match bundle's model; Qdrant local mode by default)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from fusionrt.bundle.manifest import Bundle
from fusionrt.cli import arguments
from fusionrt.cli.output import add_json_option, write_json
from fusionrt.data.world import generate_scene, render, split_seeds
from fusionrt.errors import InputError
from fusionrt.io import atomic_path
from fusionrt.progress import SILENT, Progress
from fusionrt.runtime.session import BACKENDS
from fusionrt.search.encode import ImageEncoder
from fusionrt.search.index import ImageIndex, image_files
from fusionrt.search.searcher import SHIPPED_MATCH_BUNDLE


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, help="index directory (created by the first add)")
    parser.add_argument("--bundle", default=None, help="match bundle (default: the shipped one)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("index", help="add images to / remove images from a search index")
    actions = parser.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="index every image under DIR (unchanged images are skipped)")
    add.add_argument("directory", metavar="DIR")
    _common(add)
    add.add_argument("--vectors", default=None,
                     help="vector store for a new index: a Qdrant server URL (default: Qdrant local mode in INDEX)")
    add.add_argument("--backend", default="onnxruntime", choices=sorted(BACKENDS))
    add.add_argument("--precision", default="fp32")
    add.add_argument("--batch", type=arguments.POSITIVE, default=256, help="images encoded and written per batch")
    add.add_argument("--threads", type=arguments.POSITIVE, default=None,
                     help="threads per graph session (default: the backend's own; 1 is fastest on a busy machine)")
    add_json_option(add, "what was added")
    add.add_argument("-q", "--quiet", action="store_true", help="no progress bars on stderr")
    demo = actions.add_parser("demo", help="render held-out scenes into DIR (PNG, named by seed) to index")
    demo.add_argument("directory", metavar="DIR")
    demo.add_argument("--scenes", type=arguments.POSITIVE, default=500, help="how many held-out scenes (default 500)")
    add_json_option(demo, "what was written")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bars on stderr")
    remove = actions.add_parser("remove", help="drop indexed images")
    remove.add_argument("paths", nargs="+", metavar="PATH")
    _common(remove)
    add_json_option(remove, "what was removed")
    remove.add_argument("-q", "--quiet", action="store_true", help="no progress bars on stderr")
    parser.set_defaults(handler=run)


def render_scenes(directory: str, scenes: int) -> int:
    """Write held-out scenes ``0..scenes`` as PNGs (atomically; existing ones are kept); return how many."""
    from PIL import Image

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for seed in split_seeds("heldout", scenes):
        path = out / f"{seed}.png"
        if not path.is_file():
            with atomic_path(path) as tmp:
                Image.fromarray(render(generate_scene(seed))).save(tmp, format="PNG")
    return scenes


def run(args: argparse.Namespace) -> int:
    if args.action == "demo":
        if args.scenes < 1:
            raise InputError("--scenes", "a positive integer", str(args.scenes))
        written = {"scenes": render_scenes(args.directory, args.scenes), "directory": args.directory}
        if not write_json(args.json, written):
            print(f"wrote {written['scenes']} held-out scenes to {args.directory}")
        return 0
    bundle = Bundle.open(args.bundle or SHIPPED_MATCH_BUNDLE)
    if args.action == "add":
        if args.batch < 1:
            raise InputError("--batch", "a positive integer", str(args.batch))
        image_files(Path(args.directory))  # a missing DIR is refused before an index is created
        index = ImageIndex(args.index, bundle, vectors=args.vectors)
        encoder = ImageEncoder(bundle, args.backend, args.precision,
                               **({"threads": args.threads} if args.threads else {}))
        try:
            report = index.add(args.directory, encoder, args.batch, SILENT if args.quiet else Progress())
            summary = {**asdict(report), "images": len(index)}
        finally:
            encoder.close()
            index.close()
    else:
        index = ImageIndex(args.index, bundle, create=False)
        try:
            summary = {"removed": index.remove(args.paths), "images": len(index)}
        finally:
            index.close()
    for path, why in summary.get("skipped", {}).items():
        print(f"fusionrt index: skipped {path}: {why}", file=sys.stderr)
    if not write_json(args.json, summary):
        print(" ".join(f"{k}={len(v) if isinstance(v, dict) else v}" for k, v in summary.items()))
    return 0
