"""Answerer throughput: questions per second one at a time (``ask``) vs batched (``ask_many``), in one run.

    .venv/bin/python benchmarks/bench_app.py [--scenes 16] [--questions-per-scene 8] [--rounds 5]

The default Answerer (shipped bundle, ONNX Runtime fp32). Both ways answer the same (image array,
question) pairs; each round times one pass of each way, the order alternating per round, with a pause
between passes (see fusionrt.bench.timing). Prints the median questions/s of each and the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

from fusionrt.app import Answerer
from fusionrt.bench.timing import SETTLE_SECONDS
from fusionrt.data.questions import questions_for
from fusionrt.data.world import generate_scene, render, split_seeds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--questions-per-scene", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    pairs = []
    for seed in split_seeds("heldout", args.scenes, start=1500):
        scene = generate_scene(int(seed))
        image = render(scene)
        questions = questions_for(scene, np.random.default_rng(int(seed)), per_kind=2)
        pairs += [(image, q.text) for q in questions[: args.questions_per_scene]]
    answerer = Answerer()
    one = lambda: [answerer.ask(image, q) for image, q in pairs]  # noqa: E731
    many = lambda: answerer.ask_many(pairs, batch_size=args.batch_size)  # noqa: E731
    assert [a for a, _ in one()] == [a for a, _ in many()], "batched answers differ from one-at-a-time answers"
    rates: dict[str, list[float]] = {"one at a time": [], "batched": []}
    load = os.getloadavg()[0]
    for r in range(args.rounds):
        for name in (("one at a time", "batched") if r % 2 == 0 else ("batched", "one at a time")):
            time.sleep(SETTLE_SECONDS)
            start = time.perf_counter()
            (one if name == "one at a time" else many)()
            rates[name].append(len(pairs) / (time.perf_counter() - start))
    single, batched = statistics.median(rates["one at a time"]), statistics.median(rates["batched"])
    print(f"$ {' '.join([sys.executable.split('/')[-1], *sys.argv])}")
    print(f"{len(pairs)} questions on {args.scenes} scenes, median of {args.rounds} rounds; load average "
          f"{load:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"one at a time: {single:.1f} questions/s; batched (ask_many, batch {args.batch_size}): "
          f"{batched:.1f} questions/s; ratio {batched / single:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
