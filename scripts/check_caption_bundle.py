"""Check a caption bundle end to end on held-out scenes (what ./setup.sh runs after exporting it).

    .venv/bin/python scripts/check_caption_bundle.py runs/caption-bundle [--scenes 100]

Renders held-out scenes, captions them through the bundle on ONNX Runtime (greedy, batched) and compares each
caption with the grammar's; exits 1 below --min-exact (default 0.95).
"""

from __future__ import annotations

import argparse
import sys
import time

from fusionrt.caption.captioner import Captioner
from fusionrt.data.captions import caption_text
from fusionrt.data.world import generate_scene, render, split_seeds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--min-exact", type=float, default=0.95)
    args = parser.parse_args()
    scenes = [generate_scene(seed) for seed in split_seeds("heldout", args.scenes)]
    started = time.perf_counter()
    captions = Captioner(args.bundle).caption_many([render(s) for s in scenes])
    seconds = time.perf_counter() - started
    exact = sum(c.replace(" ,", ",") == caption_text(s).replace(" ,", ",") for c, s in zip(captions, scenes,
                                                                                          strict=True))
    print(f"caption bundle {args.bundle}: {exact}/{len(scenes)} held-out captions exact ({seconds:.1f} s); "
          f"e.g. {captions[0]!r}")
    return 0 if exact >= args.min_exact * len(scenes) else 1


if __name__ == "__main__":
    sys.exit(main())
