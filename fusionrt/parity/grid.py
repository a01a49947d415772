"""Shape grids and random feeds for a graph's contract (numpy only).

For the fusion graph the feeds are shaped like real batches: row 0 is full, other rows are
partially padded at random, and in larger batches some rows have every visual slot, every text
position, or both masked, because those rows are where masking bugs (NaN, frozen shapes) show.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fusionrt.bundle.spec import GraphSpec, TensorSpec

FUSION_INPUTS = ("input_ids", "text_mask", "visual_feats", "visual_mask")
DEFAULT_BATCHES = (1, 2, 8)


@dataclass(frozen=True)
class GridPoint:
    """One set of dim sizes and a feed of those sizes."""

    sizes: Mapping[str, int]
    feed: Mapping[str, np.ndarray]

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.sizes.items())


def low_mid_high(low: int, high: int) -> tuple[int, ...]:
    """``low``, the middle and ``high``, without repeats."""
    return tuple(dict.fromkeys((low, (low + high + 1) // 2, high)))


def default_sizes(graph: GraphSpec, batches: Sequence[int] = DEFAULT_BATCHES,
                  cap: int | None = None) -> dict[str, tuple[int, ...]]:
    """Sizes to try per dim: B from ``batches`` (within range), every other dim at min, middle and max.

    ``cap`` bounds the largest size tried for dims other than B and the fusion graph's T and M (the
    region encoder's N can allow thousands of crops; its middle range is what matters).
    """
    sizes: dict[str, tuple[int, ...]] = {}
    for symbol, rng in graph.dims.items():
        if symbol == "B":
            sizes[symbol] = tuple(b for b in batches if rng.min <= b <= rng.max) or (rng.min,)
        elif cap is not None and symbol not in ("T", "M") and rng.max > cap:
            sizes[symbol] = low_mid_high(rng.min, max(rng.min, cap))
        else:
            sizes[symbol] = low_mid_high(rng.min, rng.max)
    return sizes


def _random_tensor(spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if spec.dtype == "bool" and spec.prefix_mask:  # each row's real items first; the first row full
        lengths = rng.integers(1, shape[1] + 1, size=shape[0])
        lengths[0] = shape[1]
        return np.arange(shape[1])[None, :] < lengths[:, None]
    if spec.dtype == "bool":
        return rng.random(shape) < 0.7
    if spec.np_dtype.kind in "iu":
        low, high = spec.value_range or (0, 100)
        return rng.integers(low, high + 1, size=shape, dtype=spec.np_dtype)
    return rng.random(shape, dtype=np.float32).astype(spec.np_dtype)


def fusion_feed(graph: GraphSpec, batch: int, text_len: int, visual_len: int,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A fusion feed with padded and fully masked rows (see module docstring)."""
    low, high = graph.input("input_ids").value_range or (0, 99)
    visual_dim = graph.input("visual_feats").shape[2]
    text_lengths = rng.integers(1, text_len + 1, size=batch)
    visual_lengths = rng.integers(1, visual_len + 1, size=batch)
    text_lengths[0], visual_lengths[0] = text_len, visual_len
    if batch >= 2:
        visual_lengths[-1] = 0  # no visual slot at all
    if batch >= 4:
        text_lengths[-2] = 0  # no text position: pooling over nothing
    if batch >= 8:
        text_lengths[-3] = visual_lengths[-3] = 0  # no key at all: attention over nothing
    text_mask = np.arange(text_len)[None, :] < text_lengths[:, None]
    visual_mask = np.arange(visual_len)[None, :] < visual_lengths[:, None]
    input_ids = rng.integers(low, high + 1, size=(batch, text_len), dtype=np.int64)
    input_ids[~text_mask] = low  # the pad id is the lowest id ([PAD] = 0 for our tokenizer)
    visual_feats = rng.standard_normal((batch, visual_len, visual_dim)).astype(np.float32)
    visual_feats[~visual_mask] = 0.0
    return {"input_ids": input_ids, "text_mask": text_mask, "visual_feats": visual_feats,
            "visual_mask": visual_mask}


def random_feed(graph: GraphSpec, sizes: Mapping[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A feed of the given dim sizes: fusion-shaped for the fusion contract, uniform values otherwise."""
    if tuple(t.name for t in graph.inputs) == FUSION_INPUTS:
        return fusion_feed(graph, sizes["B"], sizes["T"], sizes["M"], rng)
    return {t.name: _random_tensor(t, tuple(sizes[d] if isinstance(d, str) else d for d in t.shape), rng)
            for t in graph.inputs}


def grid_points(graph: GraphSpec, sizes: Mapping[str, Sequence[int]] | None = None, seed: int = 0,
                batches: Sequence[int] = DEFAULT_BATCHES, cap: int | None = 64) -> list[GridPoint]:
    """Every combination of ``sizes`` (default :func:`default_sizes`), each with a random feed."""
    sizes = dict(sizes) if sizes is not None else default_sizes(graph, batches, cap)
    rng = np.random.default_rng(seed)
    symbols = list(sizes)
    combos = [dict(zip(symbols, combo, strict=True)) for combo in itertools.product(*(sizes[s] for s in symbols))]
    return [GridPoint(combo, random_feed(graph, combo, rng)) for combo in combos]
