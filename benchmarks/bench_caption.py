"""Caption generation speed in one run: our runtime (ONNX Runtime and OpenVINO, each KV-cache form) against
PyTorch eager with its own KV cache and PyTorch eager recomputing the whole prefix at every step.

    .venv/bin/python benchmarks/bench_caption.py                 # defaults: --runs 20 --steps 40 --threads 2

About 2-3 minutes on an idle 2-core machine. For B=1 and B=8 (eight-object held-out scenes, whose captions are
41 tokens with BOS and EOS) every engine runs greedy decodes forced to ``--steps`` tokens (EOS ignored, so every
engine does the same work), timed per step, in blocks of ``--block`` consecutive decodes after one untimed
decode and a pause, engines in rotating order block by block (never alternating call by call). Reports:

- time to first token: the visual cache (``start``) plus the first step;
- per-token latency at each position (median over the decodes), and last / first;
- tokens/s: ``B x steps`` over the decode's time (median start + the per-position medians);
- the issue's targets: the best path's tokens/s over PyTorch-with-cache at B=1 (>= 3x) and B=8 (>= 2x), and
  its last-position latency over its first (<= 1.3x);
- one image end to end (detect, encode, generate with the Captioner's default path): p50 of each part.

Writes bench_caption.json and bench_caption.png (per-token latency vs position, cache vs recompute) beside
this script.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fusionrt.bench.caption_forms import time_decodes
from fusionrt.bundle.manifest import Bundle
from fusionrt.caption.captioner import SHIPPED_CAPTION_BUNDLE, Captioner
from fusionrt.caption.forms import FORMS, available_forms, cache_form, make_stepper
from fusionrt.caption.generate import greedy
from fusionrt.caption.steppers import TorchStepper
from fusionrt.data.batch import detect_many
from fusionrt.data.world import generate_scene, render, split_seeds
from fusionrt.model.caption_checkpoint import load_caption_checkpoint

HERE = Path(__file__).resolve().parent
TARGETS = {"B=1": 3.0, "B=8": 2.0}
FLATNESS = 1.3
OURS = "ours"


class RecomputeStepper(TorchStepper):
    """PyTorch without a cache: every step runs the whole prefix (visual projection included)."""

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
        raise NotImplementedError("the recompute baseline is timed on forced decodes only")


def engines(bundle: Bundle, threads: int) -> dict[str, tuple[str, object]]:
    """name -> (kind, stepper); kind "ours" for the runtime's steppers."""
    decoder = load_caption_checkpoint().decoder.eval()
    out: dict[str, tuple[str, object]] = {}
    for backend in FORMS:
        for form in available_forms(bundle):
            out[f"{backend}/{form}"] = (OURS, make_stepper(bundle, backend, threads=threads, form=form))
    out["torch/cache"] = ("torch", TorchStepper(decoder))
    out["torch/recompute"] = ("torch", RecomputeStepper(decoder))
    return out


def time_engines(steppers: dict[str, tuple[str, object]], visual: np.ndarray, mask: np.ndarray, steps: int,
                 bos: int, runs: int, block: int, pause: float) -> dict[str, dict]:
    """Per engine: TTFT, per-token latency at each position, tokens/s (fusionrt.bench.caption_forms.time_decodes)."""
    timed = time_decodes({name: stepper for name, (_, stepper) in steppers.items()}, visual, mask, steps, bos,
                         runs, block, pause)
    out = {}
    for name, t in timed.items():
        per_step = t["per_token_ms"]
        out[name] = {"kind": steppers[name][0], "decodes": t["decodes"], "start_ms": t["start_ms"],
                     "ttft_ms": t["start_ms"] + per_step[0], "per_token_ms": per_step, "first_ms": per_step[0],
                     "last_ms": per_step[-1], "last_over_first": per_step[-1] / per_step[0],
                     "tokens_per_s": visual.shape[0] * steps / (1e-3 * t["decode_ms"])}
    return out


def end_to_end(captioner: Captioner, images: list, runs: int, block: int, pause: float) -> dict[str, float]:
    """p50 ms of one image's detect, encode (region encoder, visual inputs assembled) and generate (greedy on
    the Captioner's stepper: visual cache and every step) and their sum, one image at a time."""
    parts: dict[str, list[float]] = {"detect": [], "encode": [], "generate": [], "total": []}

    def once(image) -> None:
        t0 = time.perf_counter()
        crops, geometry, counts = detect_many([image], captioner.max_visual_len, left_to_right=True)
        t1 = time.perf_counter()
        feats = captioner._encode(crops, geometry)
        visual = feats[None, :counts[0]].astype(np.float32)
        mask = np.ones((1, counts[0]), dtype=bool)
        t2 = time.perf_counter()
        greedy(captioner.stepper, visual, mask, bos=captioner.bos, eos=captioner.eos,
               max_new_tokens=captioner.max_new_tokens)
        t3 = time.perf_counter()
        for key, seconds in (("detect", t1 - t0), ("encode", t2 - t1), ("generate", t3 - t2), ("total", t3 - t0)):
            parts[key].append(1e3 * seconds)

    for image in images:  # warm-up
        captioner.caption(image)
    while len(parts["total"]) < runs:
        time.sleep(pause)
        for i in range(block):
            once(images[(len(parts["total"]) + i) % len(images)])
    return {key: float(np.median(values)) for key, values in parts.items()} | {"images": len(parts["total"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=SHIPPED_CAPTION_BUNDLE)
    parser.add_argument("--runs", type=int, default=20, help="timed decodes per engine and batch")
    parser.add_argument("--block", type=int, default=5, help="consecutive decodes per block")
    parser.add_argument("--steps", type=int, default=40, help="tokens per decode (EOS ignored)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every engine")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between blocks")
    parser.add_argument("--out", type=Path, default=HERE / "bench_caption.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = " ".join(["python", *sys.argv])
    load_before = os.getloadavg()
    print(f"$ {command}\nload average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    bundle = Bundle.open(args.bundle)
    captioner = Captioner(args.bundle, threads=args.threads)
    steppers = engines(bundle, args.threads)
    images = [render(generate_scene(s, num_objects=8)) for s in split_seeds("heldout", 8, start=5000)]
    results: dict[str, dict] = {}
    for batch in (1, 8):
        visual, mask = captioner.visual_inputs(images[:batch])
        results[f"B={batch}"] = time_engines(steppers, visual, mask, args.steps, captioner.bos, args.runs,
                                             args.block, args.pause)
    e2e = end_to_end(captioner, images[:4], 4 * args.runs, args.block, args.pause)
    targets = {}
    for key, row in results.items():
        best = max((n for n, r in row.items() if r["kind"] == OURS), key=lambda n: row[n]["tokens_per_s"])
        eager = row["torch/cache"]
        speedup = row[best]["tokens_per_s"] / eager["tokens_per_s"]
        targets[key] = {"best": best, "speedup_over_torch_cache": speedup, "target": TARGETS[key],
                        "met": speedup >= TARGETS[key], "last_over_first": row[best]["last_over_first"],
                        "flat": row[best]["last_over_first"] <= FLATNESS,
                        "recompute_over_cache_torch": eager["tokens_per_s"] / row["torch/recompute"]["tokens_per_s"]}
    load_after = os.getloadavg()
    report = {"command": command, "threads": args.threads, "steps": args.steps, "runs": args.runs,
              "load_average": {"before": load_before, "after": load_after},
              "default_forms": {b: cache_form(bundle, b) for b in FORMS}, "results": results,
              "targets": targets, "end_to_end_p50_ms": e2e}
    print(f"{'engine':22s} {'B':>3s} {'tokens/s':>9s} {'TTFT ms':>8s} {'first ms':>9s} {'last ms':>8s} last/first")
    for key, row in results.items():
        for name, r in row.items():
            print(f"{name:22s} {key[2:]:>3s} {r['tokens_per_s']:9.0f} {r['ttft_ms']:8.3f} {r['first_ms']:9.3f} "
                  f"{r['last_ms']:8.3f} {r['last_over_first']:6.2f}")
    for key, t in targets.items():
        print(f"{key}: best path {t['best']}: {t['speedup_over_torch_cache']:.2f}x torch-with-cache tokens/s "
              f"(target >= {t['target']}x: {'met' if t['met'] else 'MISSED'}); last/first token "
              f"{t['last_over_first']:.2f} (target <= {FLATNESS}: {'met' if t['flat'] else 'MISSED'}); torch cache "
              f"is {t['recompute_over_cache_torch']:.2f}x torch recompute")
    print("one image end to end, p50 ms (Captioner defaults " + str(report["default_forms"]) + "): "
          + ", ".join(f"{k} {v:.2f}" for k, v in e2e.items() if k != "images"))
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    args.out.write_text(json.dumps(report, indent=1))
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(12, 4.5))
    for axis, (key, row) in zip(np.atleast_1d(axes), results.items(), strict=True):
        for name, values in row.items():
            style = "-" if values["kind"] == OURS else "--"
            axis.plot(np.arange(1, len(values["per_token_ms"]) + 1), values["per_token_ms"], style, label=name)
        axis.set(xlabel="position (tokens after BOS)", ylabel="ms per token (median)", yscale="log",
                 title=f"per-token latency, {key}: KV cache vs recompute")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=90)


if __name__ == "__main__":
    sys.exit(main())
