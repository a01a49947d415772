"""Write calibration and held-out feeds for examples/hf_cross_attention.py: npz files whose keys are the fusion
graph's inputs (input_ids, text_mask, visual_feats, visual_mask) and, unless --no-labels, ``labels``.

    python examples/write_feeds.py --out runs/example-feeds

writes runs/example-feeds/calibration/*.npz and runs/example-feeds/heldout/*.npz. Rows have their own text and
visual lengths (prefix masks), and some have no regions at all. The labels follow a rule a model can learn: the
class is the largest of the first NUM_CLASSES features of the mean region (rows without regions: the first token
id modulo NUM_CLASSES). Only numpy is needed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

# examples/hf_cross_attention.py's dims (kept here too so this script needs neither torch nor transformers).
VOCAB_SIZE, VISUAL_DIM, MAX_TEXT_LEN, MAX_VISUAL_LEN, NUM_CLASSES = 1000, 32, 16, 12, 10


def feed(rows: int, rng: np.random.Generator, labels: bool) -> dict[str, np.ndarray]:
    """One feed of ``rows`` rows padded to this feed's longest text and region set."""
    text_lens = rng.integers(2, MAX_TEXT_LEN + 1, rows)
    visual_lens = rng.integers(0, MAX_VISUAL_LEN + 1, rows)
    width_t, width_m = int(text_lens.max()), max(1, int(visual_lens.max()))
    text_mask = np.arange(width_t)[None, :] < text_lens[:, None]
    visual_mask = np.arange(width_m)[None, :] < visual_lens[:, None]
    arrays = {
        "input_ids": np.where(text_mask, rng.integers(1, VOCAB_SIZE, (rows, width_t)), 0).astype(np.int64),
        "text_mask": text_mask,
        "visual_feats": (rng.standard_normal((rows, width_m, VISUAL_DIM)) * visual_mask[..., None]).astype(np.float32),
        "visual_mask": visual_mask,
    }
    if labels:
        counts = np.maximum(visual_lens, 1)[:, None]
        mean_region = arrays["visual_feats"][:, :, :NUM_CLASSES].sum(axis=1) / counts
        arrays["labels"] = np.where(visual_lens > 0, mean_region.argmax(axis=1),
                                    arrays["input_ids"][:, 0] % NUM_CLASSES).astype(np.int64)
    return arrays


def write(directory: Path, files: int, rows: int, seed: int, labels: bool) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(files):
        np.savez(directory / f"feed{index:03d}.npz", **feed(rows, rng, labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="writes OUT/calibration and OUT/heldout")
    parser.add_argument("--calibration-files", type=int, default=4)
    parser.add_argument("--heldout-files", type=int, default=8)
    parser.add_argument("--rows", type=int, default=16, help="rows per file (default 16)")
    parser.add_argument("--no-labels", action="store_true", help="held-out feeds without labels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    write(out / "calibration", args.calibration_files, args.rows, args.seed, labels=False)
    write(out / "heldout", args.heldout_files, args.rows, args.seed + 1, labels=not args.no_labels)
    print(f"wrote {args.calibration_files} calibration and {args.heldout_files} held-out feeds of {args.rows} rows "
          f"under {out}")


if __name__ == "__main__":
    main()
