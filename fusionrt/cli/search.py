"""``fusionrt search INDEX "query" --top 10 [--rerank k]``: ranked image paths with scores."""

from __future__ import annotations

import argparse

from fusionrt.cli import arguments
from fusionrt.cli.output import add_json_option, write_json
from fusionrt.runtime.session import BACKENDS
from fusionrt.search.searcher import FIRST_STAGES, Searcher


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("search", help="find the indexed images a text describes")
    parser.add_argument("index", metavar="INDEX", help="index directory written by `fusionrt index add`")
    parser.add_argument("query", help='e.g. "a small red circle", "two blue objects"')
    parser.add_argument("--top", type=arguments.POSITIVE, default=10, help="results to print (default 10)")
    parser.add_argument("--rerank", type=arguments.NON_NEGATIVE, default=0, metavar="K",
                        help="re-rank the first stage's top K with the ITM fusion (default 0: embeddings only)")
    parser.add_argument("--first-stage", default="auto", choices=FIRST_STAGES,
                        help="vector search: the store's own (store), exact in process over the store's vectors "
                             "(memory), or memory for the embedded local mode and store for a server (auto)")
    parser.add_argument("--bundle", default=None, help="match bundle (default: the shipped one)")
    parser.add_argument("--backend", default="onnxruntime", choices=sorted(BACKENDS))
    parser.add_argument("--precision", default="fp32")
    add_json_option(parser, "the ranked results")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    searcher = Searcher(args.index, args.bundle, args.backend, args.precision, args.first_stage)
    try:
        hits = searcher.search(args.query, args.top, args.rerank)
    finally:
        searcher.close()
    if not write_json(args.json, {"query": args.query, "rerank": args.rerank,
                                  "results": [{"path": h.path, "sha256": h.sha256, "score": h.score} for h in hits]}):
        for hit in hits:
            print(f"{hit.score:.4f}\t{hit.path}")
    return 0
