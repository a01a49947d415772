"""Caption generation speed, each engine timed in blocks in one run: the caption bundle on ONNX Runtime with
its KV cache (IO binding), PyTorch eager with its own KV cache, and PyTorch eager recomputing the whole prefix.

    .venv/bin/python benchmarks/bench_caption.py [--bundle fusionrt/assets/caption-bundle] [--runs 5]

Reports time to first token (visual cache + first step, detection and region encoding apart), per-token latency
at each position (B=1, eight-object scenes: 40 generated tokens), tokens/s at B=1 and B=8, the ratios the issue
targets, and the end-to-end p50 of one image (detect, encode, generate). Writes bench_caption.json and
bench_caption.png (per-token latency vs position, cache vs recompute) beside this script.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fusionrt.bundle.manifest import Bundle
from fusionrt.caption.captioner import SHIPPED_CAPTION_BUNDLE, Captioner
from fusionrt.caption.steppers import OrtStepper, TorchStepper
from fusionrt.data.caption_set import ordered_regions
from fusionrt.data.world import generate_scene, render, split_seeds
from fusionrt.model.caption_checkpoint import load_caption_checkpoint

HERE = Path(__file__).resolve().parent


class RecomputeStepper(TorchStepper):
    """PyTorch without a cache: every step runs the full prefix."""

    def start(self, visual_feats, visual_mask):
        self.feats, self.mask = torch.from_numpy(visual_feats), torch.from_numpy(visual_mask)
        self.ids = torch.zeros((visual_feats.shape[0], 0), dtype=torch.long)
        self.batch, self.past_length = visual_feats.shape[0], 0

    def step(self, ids, new_mask=None):
        self.ids = torch.cat([self.ids, torch.from_numpy(ids)], dim=1)
        with torch.inference_mode():
            logits = self.decoder(self.ids, torch.ones(self.ids.shape, dtype=torch.bool), self.feats, self.mask)
        self.past_length = self.ids.shape[1]
        return logits[:, -ids.shape[1]:].numpy()

    def select(self, rows):
        raise NotImplementedError


def timed_decode(stepper, visual, mask, steps: int, bos: int) -> tuple[float, list[float]]:
    """(start seconds, per-step seconds) of a greedy decode forced to ``steps`` tokens (EOS ignored)."""
    started = time.perf_counter()
    stepper.start(visual, mask)
    start_seconds = time.perf_counter() - started
    ids = np.full((visual.shape[0], 1), bos, dtype=np.int64)
    per_step = []
    for _ in range(steps):
        t0 = time.perf_counter()
        logits = stepper.step(ids)
        ids = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
        per_step.append(time.perf_counter() - t0)
    return start_seconds, per_step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=SHIPPED_CAPTION_BUNDLE)
    parser.add_argument("--runs", type=int, default=5, help="decodes per engine and batch (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"$ {' '.join(['python', *sys.argv])}")
    captioner = Captioner(args.bundle, threads=args.threads)
    decoder = load_caption_checkpoint().decoder
    engines = {"ort_cache": OrtStepper(Bundle.open(args.bundle), threads=args.threads),
               "torch_cache": TorchStepper(decoder), "torch_recompute": RecomputeStepper(decoder)}
    scenes = [generate_scene(s, num_objects=8) for s in split_seeds("heldout", 8, start=5000)]
    images = [render(s) for s in scenes]
    steps = 40  # eight objects: 41 tokens with BOS and EOS
    results: dict[str, dict] = {}
    for batch in (1, 8):
        visual, mask = captioner.visual_inputs(images[:batch])
        for name, stepper in engines.items():  # blocks: every run of one engine, then the next
            timed_decode(stepper, visual, mask, steps, captioner.bos)
            runs = [timed_decode(stepper, visual, mask, steps, captioner.bos) for _ in range(args.runs)]
            time.sleep(0.5)
            per_step = np.median(np.array([r[1] for r in runs]), axis=0)
            start = float(np.median([r[0] for r in runs]))
            total = start + float(per_step.sum())
            results.setdefault(f"B={batch}", {})[name] = {
                "ttft_ms": 1e3 * (start + per_step[0]), "per_token_ms": (1e3 * per_step).round(4).tolist(),
                "first_ms": 1e3 * per_step[0], "last_ms": 1e3 * per_step[-1],
                "tokens_per_s": batch * steps / total}
    # one image end to end: detect, encode, generate
    parts = {"detect": [], "encode": [], "generate": [], "total": []}
    for _ in range(3 * args.runs):
        for image in images[:4]:
            t0 = time.perf_counter()
            regions = ordered_regions(image)
            t1 = time.perf_counter()
            captioner._encode(regions.crops_float(), regions.geometry)
            t2 = time.perf_counter()
            captioner.caption(image)
            t3 = time.perf_counter()
            parts["detect"].append(t1 - t0)
            parts["encode"].append(t2 - t1)
            parts["generate"].append((t3 - t2) - (t1 - t0) - (t2 - t1))  # caption() detects and encodes again
            parts["total"].append(t3 - t2)
    end_to_end = {k: 1e3 * float(np.median(v)) for k, v in parts.items()}
    report = {"threads": args.threads, "steps": steps, "results": results, "end_to_end_p50_ms": end_to_end}
    for key, row in results.items():
        ort, eager = row["ort_cache"], row["torch_cache"]
        print(f"{key}: tokens/s ort {ort['tokens_per_s']:.0f}, torch cache {eager['tokens_per_s']:.0f}, "
              f"torch recompute {row['torch_recompute']['tokens_per_s']:.0f}; ort/torch-cache "
              f"{ort['tokens_per_s'] / eager['tokens_per_s']:.2f}x; TTFT ort {ort['ttft_ms']:.2f} ms, torch "
              f"{eager['ttft_ms']:.2f} ms; ort last/first token {ort['last_ms'] / ort['first_ms']:.2f}")
    print("one image end to end p50 (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in end_to_end.items()))
    (HERE / "bench_caption.json").write_text(json.dumps(report, indent=1))
    plot(results, HERE / "bench_caption.png")
    return 0


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(11, 4))
    for axis, (key, row) in zip(np.atleast_1d(axes), results.items(), strict=True):
        for name, values in row.items():
            axis.plot(np.arange(1, len(values["per_token_ms"]) + 1), values["per_token_ms"], label=name)
        axis.set(xlabel="position (tokens after BOS)", ylabel="ms per token", title=f"per-token latency, {key}",
                 yscale="log")
        axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=90)


if __name__ == "__main__":
    sys.exit(main())
