"""The I/O contracts of the two graphs a bundle can hold, as :class:`GraphSpec` (torch-free).

Fusion: ``(input_ids int64 [B,T], text_mask bool [B,T], visual_feats float32 [B,M,Dv],
visual_mask bool [B,M]) -> (hidden float32 [B,T,H], logits float32 [B,A])``.
Region encoder: ``(crops float32 [N,3,S,S], geometry float32 [N,G]) -> feats float32 [N,Dv]``.
"""

from __future__ import annotations

from collections.abc import Iterable

from fusionrt.bundle.manifest import graph_filename
from fusionrt.bundle.spec import FUSION, FUSION_INPUTS, REGION_ENCODER, DimRange, GraphSpec, TensorSpec

__all__ = ["FUSION", "FUSION_INPUTS", "REGION_ENCODER", "example_size", "fusion_spec", "max_corner",
           "region_encoder_spec"]
FUSION_OUTPUTS = ("hidden", "logits")
REGION_INPUTS = ("crops", "geometry")
REGION_OUTPUTS = ("feats",)


def _middle(high: int) -> int:
    return max(1, (high + 1) // 2)


def fusion_spec(*, vocab_size: int, visual_dim: int, hidden: int, num_answers: int, max_text_len: int,
                max_visual_len: int, max_batch: int, outputs: tuple[TensorSpec, ...] | None = None) -> GraphSpec:
    """Batch up to ``max_batch``; one question per row is the size to tune for; M may be empty (padded).
    Both masks are prefixes: each row's real tokens / regions first, padding after. ``outputs``: a user
    module's own outputs (any float32 tensors over B, T, M and static sizes) instead of (hidden, logits)."""
    dims = {
        "B": DimRange(1, 1, max_batch),
        "T": DimRange(1, _middle(max_text_len), max_text_len),
        "M": DimRange(1, _middle(max_visual_len), max_visual_len, pad_when_empty=True),
    }
    return GraphSpec(
        FUSION,
        inputs=(
            TensorSpec("input_ids", "int64", ("B", "T"), (0, vocab_size - 1)),
            TensorSpec("text_mask", "bool", ("B", "T"), prefix_mask=True),
            TensorSpec("visual_feats", "float32", ("B", "M", visual_dim)),
            TensorSpec("visual_mask", "bool", ("B", "M"), prefix_mask=True),
        ),
        outputs=outputs or (TensorSpec("hidden", "float32", ("B", "T", hidden)),
                            TensorSpec("logits", "float32", ("B", num_answers))),
        dims=dims,
        precisions={"fp32": graph_filename(FUSION)},
    )


def region_encoder_spec(*, crop_size: int, geometry_dim: int, feature_dim: int, max_regions: int,
                        opt_regions: int) -> GraphSpec:
    """Any number of crops up to ``max_regions``; one image's regions is the size to tune for."""
    return GraphSpec(
        REGION_ENCODER,
        inputs=(TensorSpec("crops", "float32", ("N", 3, crop_size, crop_size)),
                TensorSpec("geometry", "float32", ("N", geometry_dim))),
        outputs=(TensorSpec("feats", "float32", ("N", feature_dim)),),
        dims={"N": DimRange(1, min(opt_regions, max_regions), max_regions)},
        precisions={"fp32": graph_filename(REGION_ENCODER)},
    )


def max_corner(graph: GraphSpec) -> dict[str, int]:
    """Every dynamic dim at its declared max at once: the largest shape a TensorRT profile built from
    the manifest admits, so export verification must run it at least once."""
    return {symbol: rng.max for symbol, rng in graph.dims.items()}


def example_size(prefer: int, upper: int, taken: Iterable[int]) -> int:
    """A size near ``prefer``, within ``[2, upper]`` and different from ``taken``.

    The dynamo exporter specializes a dim whose example size is 0 or 1, and may tie two dims (or a
    dim and a static size) that happen to be equal in the example, so example sizes are kept apart.
    """
    taken = set(taken)
    for size in [*range(prefer, 1, -1), *range(prefer + 1, upper + 1)]:
        if 2 <= size <= upper and size not in taken:
            return size
    return max(1, min(prefer, upper))
