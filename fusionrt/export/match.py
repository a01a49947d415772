"""``export_match_checkpoint``: the matching model's four graphs in one bundle with task "match".

- ``fusion``: the ITM fusion over ``[text; W.visual]`` (the fusion contract; ``logits`` [B,1] is the relevance
  logit), so calibration, engines and parity treat it as any fusion graph;
- ``region_encoder``: the shipped scene-world region encoder (the index stores its features);
- ``text_embed``: ``(input_ids int64 [B,T], text_mask bool [B,T]) -> text_embedding float32 [B,E]``;
- ``image_embed``: ``(visual_feats float32 [B,M,Dv], visual_mask bool [B,M]) -> image_embedding float32 [B,E]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fusionrt.bundle.manifest import graph_filename
from fusionrt.bundle.source import checkpoint_files_sha256, weights_sha256
from fusionrt.bundle.spec import DimRange, GraphSpec, TensorSpec
from fusionrt.export.api import _export, _fusion_graph, _Graph, _positive, _region_graph, checkpoint_model_manifest
from fusionrt.export.contract import FUSION, REGION_ENCODER, example_size
from fusionrt.progress import SILENT, Progress

MATCH_TASK = "match"
TEXT_EMBED = "text_embed"
IMAGE_EMBED = "image_embed"


def _middle(high: int) -> int:
    return max(1, (high + 1) // 2)


def text_embed_spec(*, vocab_size: int, max_text_len: int, embed_dim: int, max_batch: int) -> GraphSpec:
    return GraphSpec(
        TEXT_EMBED,
        inputs=(TensorSpec("input_ids", "int64", ("B", "T"), (0, vocab_size - 1)),
                TensorSpec("text_mask", "bool", ("B", "T"), prefix_mask=True)),
        outputs=(TensorSpec("text_embedding", "float32", ("B", embed_dim)),),
        dims={"B": DimRange(1, 1, max_batch), "T": DimRange(1, _middle(max_text_len), max_text_len)},
        precisions={"fp32": graph_filename(TEXT_EMBED)},
    )


def image_embed_spec(*, visual_dim: int, max_visual_len: int, embed_dim: int, max_batch: int) -> GraphSpec:
    return GraphSpec(
        IMAGE_EMBED,
        inputs=(TensorSpec("visual_feats", "float32", ("B", "M", visual_dim)),
                TensorSpec("visual_mask", "bool", ("B", "M"), prefix_mask=True)),
        outputs=(TensorSpec("image_embedding", "float32", ("B", embed_dim)),),
        dims={"B": DimRange(1, 1, max_batch),
              "M": DimRange(1, _middle(max_visual_len), max_visual_len, pad_when_empty=True)},
        precisions={"fp32": graph_filename(IMAGE_EMBED)},
    )


def _example_masks(batch: int, length: int) -> np.ndarray:
    mask = np.ones((batch, length), dtype=bool)
    mask[1:, length - 1:] = False  # padding on every row but the first, never an empty row
    return mask


def export_match_checkpoint(checkpoint_dir: str | Path | None, out_dir: str | Path, *, max_batch: int = 256,
                            opset: int = 17, exporter: str = "auto", atol: float = 1e-4,
                            progress: Progress = SILENT) -> Path:
    """Export a matching checkpoint (``None``: the shipped one) to a verified bundle with task "match"."""
    import torch

    from fusionrt.model.match_checkpoint import SHIPPED_MATCH_CHECKPOINT, load_match_checkpoint

    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else SHIPPED_MATCH_CHECKPOINT
    _positive(max_batch=max_batch)
    source_files = checkpoint_files_sha256(checkpoint_dir) if checkpoint_dir.is_dir() else {}
    loaded = load_match_checkpoint(checkpoint_dir)
    model, config = loaded.model, loaded.model.config
    embed_dim = model.heads.embed_dim
    batch = example_size(3, max_batch, ())
    text_len = example_size(5, config.max_text_len, (batch, embed_dim))
    visual_len = example_size(4, config.max_visual_len, (batch, embed_dim, config.visual_dim))
    rng = np.random.default_rng(0)
    text_mask = _example_masks(batch, text_len)
    visual_mask = _example_masks(batch, visual_len)
    text_embedder = model.text_embedder()
    graphs = [
        _fusion_graph(model.itm, vocab_size=config.vocab_size, visual_dim=config.visual_dim,
                      max_text_len=config.max_text_len, max_visual_len=config.max_visual_len, max_batch=max_batch),
        _region_graph(loaded.region_encoder, max_regions=max_batch * config.max_visual_len,
                      opt_regions=config.max_visual_len),
        _Graph(text_embed_spec(vocab_size=config.vocab_size, max_text_len=config.max_text_len, embed_dim=embed_dim,
                               max_batch=max_batch), text_embedder,
               (torch.from_numpy(np.where(text_mask, rng.integers(0, config.vocab_size, text_mask.shape), 0)),
                torch.from_numpy(text_mask))),
        _Graph(image_embed_spec(visual_dim=config.visual_dim, max_visual_len=config.max_visual_len,
                                embed_dim=embed_dim, max_batch=max_batch), model.image_embedder,
               (torch.from_numpy(rng.standard_normal((batch, visual_len, config.visual_dim)).astype(np.float32)),
                torch.from_numpy(visual_mask))),
    ]
    manifest = {
        "task": MATCH_TASK,
        "model": {**checkpoint_model_manifest(model, config, loaded.region_encoder, max_batch),
                  "embed_dim": embed_dim},
        "source": {
            "kind": "checkpoint", "path": str(checkpoint_dir.resolve()), "files": source_files,
            "weights_sha256": {FUSION: weights_sha256(model.itm), REGION_ENCODER: weights_sha256(loaded.region_encoder),
                               TEXT_EMBED: weights_sha256(text_embedder),
                               IMAGE_EMBED: weights_sha256(model.image_embedder)},
        },
    }
    files = {"tokenizer.json": (checkpoint_dir / "tokenizer.json").read_bytes()}
    return _export(out_dir, graphs, files, manifest, opset, exporter, atol, progress)
