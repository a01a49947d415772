"""The Triton ``caption`` and ``match`` models against the same work done locally, in one run, loopback only.

    .venv/bin/python benchmarks/bench_triton_tasks.py [--python .venv-serve/bin/python] [--blocks 3] [--calls 10]

caption: one held-out scene per request, greedy, sequential calls (gRPC) vs ``Captioner().caption`` here.
match: one query re-ranking k=64 stored-feature candidates in one request vs ``Matcher().itm_logits`` here.
Each side runs ``--blocks`` blocks of ``--calls`` consecutive calls with a pause between blocks (local and
server blocks alternate block by block, never call by call). Prints p50 per call (ms) and the ratio.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PAUSE_SECONDS = 1.0


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def blocks(local, served, count: int, calls: int) -> tuple[list[float], list[float]]:
    """Per-call seconds of ``local(i)`` and ``served(i)``, in alternating blocks of ``calls`` calls."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(count):
        for side, run in enumerate((local, served)):
            for i in range(calls):
                start = time.perf_counter()
                run(i)
                times[side].append(time.perf_counter() - start)
            time.sleep(PAUSE_SECONDS)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=str(ROOT / ".venv-serve" / "bin" / "python"))
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()

    import tritonclient.grpc as grpcclient

    from fusionrt.caption.captioner import SHIPPED_CAPTION_BUNDLE, Captioner
    from fusionrt.data.world import generate_scene, render, split_seeds
    from fusionrt.search.searcher import SHIPPED_MATCH_BUNDLE, Matcher
    from fusionrt.serve import TritonServer, write_repository

    scenes = [render(generate_scene(s)) for s in split_seeds("heldout", args.calls)]
    encoded = [png(s) for s in scenes]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        captioner = Captioner()
        repo = write_repository(SHIPPED_CAPTION_BUNDLE, Path(scratch) / "caption")
        with TritonServer(repo, python=args.python) as server, \
                grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as client:

            def served(i: int) -> str:
                tensor = grpcclient.InferInput("image", [1, 1], "BYTES")
                tensor.set_data_from_numpy(np.array([[encoded[i]]], dtype=np.object_))
                return client.infer("caption", [tensor]).as_numpy("caption")[0, 0].decode()

            assert served(0) == captioner.caption(scenes[0])
            rows.append(("caption (greedy, 1 image)", *blocks(lambda i: captioner.caption(scenes[i]), served,
                                                             args.blocks, args.calls)))

        matcher = Matcher()
        regions = matcher.images.regions(scenes) * (64 // len(scenes) + 1)
        regions = regions[:64]
        query = "a small red circle"
        repo = write_repository(SHIPPED_MATCH_BUNDLE, Path(scratch) / "match")
        with TritonServer(repo, python=args.python) as server, \
                grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as client:
            width = max(len(r) for r in regions)
            feats = np.zeros((64, width, 69), np.float32)
            mask = np.zeros((64, width), bool)
            for row, r in enumerate(regions):
                feats[row, : len(r)], mask[row, : len(r)] = r, True

            def rerank(_: int) -> np.ndarray:
                inputs = [grpcclient.InferInput("text", [64, 1], "BYTES"),
                          grpcclient.InferInput("visual_feats", list(feats.shape), "FP32"),
                          grpcclient.InferInput("visual_mask", list(mask.shape), "BOOL")]
                inputs[0].set_data_from_numpy(np.array([[query.encode()]] * 64, dtype=np.object_))
                inputs[1].set_data_from_numpy(feats)
                inputs[2].set_data_from_numpy(mask)
                return client.infer("match", inputs).as_numpy("score")

            rows.append(("match (k=64 candidates, 1 query)",
                         *blocks(lambda _: matcher.itm_logits(query, regions), rerank, args.blocks, args.calls)))
        matcher.close()
    print("| work | local p50 ms | Triton p50 ms | Triton / local |")
    print("|---|---|---|---|")
    for name, local, served_times in rows:
        a, b = statistics.median(local) * 1e3, statistics.median(served_times) * 1e3
        print(f"| {name} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
