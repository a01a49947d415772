"""KV-cache form per backend on a caption bundle: growing Concat (``caption_step``) vs a fixed-capacity buffer
written at position P (``caption_step_buffer``), on ONNX Runtime and OpenVINO, in one run.

    .venv/bin/python benchmarks/bench_caption_cache_form.py [--bundle fusionrt/assets/caption-bundle]
        [--runs 20] [--steps 40] [--threads 2] [--record]

Each backend x form x batch (B=1, B=8) is a forced greedy decode of ``--steps`` tokens, timed in blocks of five
consecutive decodes in rotating order (fusionrt.bench.caption_forms). Before timing, each form's cached
decoding is checked against the PyTorch model recomputing the whole prefix: logits within 1e-4 at every step.
``--record`` writes the faster form per backend into the bundle's manifest (section ``cache_forms``), which
the Captioner then runs. Takes about a minute.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from fusionrt.bench.caption_forms import choose_cache_forms, forced_decode, timing_inputs
from fusionrt.bundle.manifest import Bundle
from fusionrt.caption.captioner import SHIPPED_CAPTION_BUNDLE
from fusionrt.caption.forms import FORMS, available_forms, make_stepper
from fusionrt.model.caption_checkpoint import load_caption_checkpoint


def recompute_error(bundle: Bundle, backend: str, form: str, steps: int) -> float:
    """Largest |logit| difference over ``steps`` cached steps (B=3, partly masked regions) vs recompute."""
    decoder = load_caption_checkpoint().decoder
    feats, mask = timing_inputs(bundle, 3, seed=1)
    mask[1, 5:] = False
    mask[2, 1:] = False
    stepper = make_stepper(bundle, backend, form=form)
    stepper.start(feats, mask)
    ids = np.full((3, 1), int(bundle.model["bos_id"]), dtype=np.int64)
    history, worst = ids, 0.0
    for _ in range(steps):
        logits = stepper.step(ids)[:, -1]
        with torch.inference_mode():
            full = decoder(torch.from_numpy(history), torch.ones(history.shape, dtype=torch.bool),
                           torch.from_numpy(feats), torch.from_numpy(mask))[:, -1].numpy()
        worst = max(worst, float(np.abs(logits - full).max()))
        ids = logits.argmax(-1)[:, None].astype(np.int64)
        history = np.concatenate([history, ids], axis=1)
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(SHIPPED_CAPTION_BUNDLE))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--record", action="store_true", help="write the choice into the bundle's manifest")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = " ".join(["python", *sys.argv])
    print(f"$ {command}\nload average before: {os.getloadavg()}")
    bundle = Bundle.open(args.bundle)
    for backend in FORMS:
        for form in available_forms(bundle):
            error = recompute_error(bundle, backend, form, args.steps)
            print(f"{backend} {form}: max |logit - recompute| over {args.steps} steps {error:.2e}")
            if error > 1e-4:
                print("FAILED: cached decoding differs from recompute past 1e-4")
                return 1
    section = choose_cache_forms(bundle.path, record=args.record, command=command, runs=args.runs,
                                 steps=args.steps, threads=args.threads)
    for backend, forms in section["decode_ms"].items():
        for form, by_batch in forms.items():
            cells = ", ".join(f"{b} {ms:.2f} ms ({ms / args.steps * 1e3:.0f} us/token)" for b, ms in by_batch.items())
            print(f"{backend:12s} {form:7s} {cells}")
    print(f"choice: {section['choice']} ({'recorded in the manifest' if args.record else 'not recorded'}); "
          f"load average {section['load_average']}")
    # per-position flatness of each form at B=8 (one decode, after a warm-up)
    feats, mask = timing_inputs(bundle, 8)
    for backend in FORMS:
        for form in available_forms(bundle):
            stepper = make_stepper(bundle, backend, threads=args.threads, form=form)
            forced_decode(stepper, feats, mask, args.steps, int(bundle.model["bos_id"]))
            per = np.median([forced_decode(stepper, feats, mask, args.steps, int(bundle.model["bos_id"]))[1]
                             for _ in range(5)], axis=0) * 1e6
            print(f"{backend:12s} {form:7s} B=8 per token first {per[0]:.0f} us, last {per[-1]:.0f} us, "
                  f"last/first {per[-1] / per[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
