"""Polygraphy data loader of a fusionrt bundle: real feeds for ``polygraphy run``.

``fusionrt calibrate`` copies this file into the bundle as ``polygraphy_loader.py`` (listed in the manifest), so

    polygraphy run BUNDLE/fusion.int8.onnx --onnxrt --data-loader-script BUNDLE/polygraphy_loader.py

runs the graph on real questions instead of random inputs. It needs numpy only (no fusionrt import), reads the
files next to it, and yields, in this order:

- the calibration set (``calibration.npz``) in padded batches of ``FUSIONRT_POLYGRAPHY_BATCH`` rows (default 8),
  each batch cut to its longest question and visual set, so masks and padding are exercised as a server runs them;
- the held-out feeds (``heldout.npz``, same four arrays) the same way, where the bundle has them.

``FUSIONRT_POLYGRAPHY_LIMIT`` caps the number of feeds (default: all). Feeds are fusion-graph feeds
(``input_ids``, ``text_mask``, ``visual_feats``, ``visual_mask``), for the fp32, fp16 and int8 graphs alike.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

FILES = ("calibration.npz", "heldout.npz")
KEYS = ("input_ids", "text_mask", "visual_feats", "visual_mask")


def batches(arrays: dict[str, np.ndarray], batch: int) -> Iterator[dict[str, np.ndarray]]:
    """Padded batches of ``batch`` rows of one npz's arrays, cut to the longest text and visual set of each batch."""
    rows = int(arrays["input_ids"].shape[0])
    for start in range(0, rows, batch):
        part = slice(start, start + batch)
        text = max(1, int(arrays["text_mask"][part].sum(axis=1).max()))
        visual = max(1, int(arrays["visual_mask"][part].sum(axis=1).max()))
        yield {"input_ids": np.ascontiguousarray(arrays["input_ids"][part, :text], dtype=np.int64),
               "text_mask": np.ascontiguousarray(arrays["text_mask"][part, :text], dtype=np.bool_),
               "visual_feats": np.ascontiguousarray(arrays["visual_feats"][part, :visual], dtype=np.float32),
               "visual_mask": np.ascontiguousarray(arrays["visual_mask"][part, :visual], dtype=np.bool_)}


def load_data(bundle_dir: str | Path | None = None) -> Iterator[dict[str, np.ndarray]]:
    """The feeds described in the module docstring, from ``bundle_dir`` (default: this file's directory)."""
    here = Path(bundle_dir) if bundle_dir is not None else Path(__file__).resolve().parent
    batch = int(os.environ.get("FUSIONRT_POLYGRAPHY_BATCH", "8"))
    limit = os.environ.get("FUSIONRT_POLYGRAPHY_LIMIT")
    remaining = int(limit) if limit else None
    for name in FILES:
        path = here / name
        if not path.is_file():
            continue
        with np.load(path, allow_pickle=False) as data:  # never unpickle: the arrays are plain numbers
            arrays = {key: data[key] for key in KEYS}
        for feed in batches(arrays, batch):
            if remaining is not None:
                if remaining <= 0:
                    return
                remaining -= 1
            yield feed
