"""``fusionrt render --seed N OUT.png``: write a scene and print questions with their answers."""

from __future__ import annotations

import argparse

import numpy as np

from fusionrt.cli import arguments
from fusionrt.cli.output import check_output
from fusionrt.data.captions import caption_text
from fusionrt.data.questions import questions_for
from fusionrt.data.world import generate_scene, render
from fusionrt.io import atomic_path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("render", help="render a scene and print questions about it")
    parser.add_argument("out", help="PNG file to write")
    parser.add_argument("--seed", type=arguments.SEED, default=0, help="scene seed (default 0)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    check_output("out", args.out)
    from PIL import Image

    scene = generate_scene(args.seed)
    with atomic_path(args.out) as tmp:
        Image.fromarray(render(scene)).save(tmp, format="PNG")
    print(f"wrote {args.out}: {len(scene.objects)} objects (seed {args.seed})")
    for question in questions_for(scene, np.random.default_rng(args.seed)):
        print(f'  fusionrt ask {args.out} "{question.text}"   # expected: {question.answer}')
    print(f"  fusionrt caption {args.out}   # expected: {caption_text(scene).replace(' ,', ',')}")
    return 0
