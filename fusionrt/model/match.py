"""The matching model: the seed's fusion with an image-text matching (ITM) head and a dual-encoder head.

- ITM: the fusion model over ``[text; W.visual]`` with one output, the relevance logit, read from the
  pooled hidden states (the fusion model's own masked mean and classifier, ``num_answers=1``).
- Text embedding: the same fusion layers run on the text alone (every visual key masked), pooled and
  projected: the text side needs no image, so a query is embedded once.
- Image embedding: a per-region MLP over the region features, pooled (mean, max and a scaled sum, so
  counts survive pooling) and projected: computed once per image and stored in the index.

Both embeddings are L2-normalised, so their dot product is the cosine the vector index ranks by.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fusionrt.model.config import FusionConfig
from fusionrt.model.fusion import FusionModel

EMBED_DIM = 64
# The pooled sum is divided by this (the scene world's most objects) to keep it O(1).
SUM_SCALE = 8.0


@dataclass(frozen=True)
class MatchHeadConfig:
    """Widths of the dual-encoder heads."""

    embed_dim: int = EMBED_DIM
    region_hidden: int = 128


def unit_length(x: torch.Tensor) -> torch.Tensor:
    """``x`` scaled to unit L2 norm along the last dim (written out: ``F.normalize``'s ``expand_as`` leaves the
    exported graph's output width symbolic)."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True).clamp(min=1.0e-12))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    keep = mask[:, :, None].to(values.dtype)
    return (values * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)


class TextEmbedder(nn.Module):
    """``(input_ids int64 [B,T], text_mask bool [B,T]) -> text_embedding float32 [B,E]`` (unit length)."""

    def __init__(self, fusion: FusionModel, head: nn.Linear) -> None:
        super().__init__()
        self.fusion = fusion
        self.head = head

    def forward(self, input_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        batch = input_ids.shape[0]
        no_visual = torch.zeros((batch, 1, self.fusion.config.visual_dim), dtype=torch.float32)
        hidden, _ = self.fusion(input_ids, text_mask, no_visual, torch.zeros((batch, 1), dtype=torch.bool))
        return unit_length(self.head(_masked_mean(hidden, text_mask)))


class ImageEmbedder(nn.Module):
    """``(visual_feats float32 [B,M,Dv], visual_mask bool [B,M]) -> image_embedding float32 [B,E]`` (unit length)."""

    def __init__(self, visual_dim: int, config: MatchHeadConfig) -> None:
        super().__init__()
        self.region = nn.Sequential(nn.Linear(visual_dim, config.region_hidden), nn.GELU(),
                                    nn.Linear(config.region_hidden, config.region_hidden), nn.GELU())
        self.head = nn.Linear(3 * config.region_hidden, config.embed_dim)

    def forward(self, visual_feats: torch.Tensor, visual_mask: torch.Tensor) -> torch.Tensor:
        regions = self.region(visual_feats)
        keep = visual_mask[:, :, None].to(regions.dtype)
        mean = _masked_mean(regions, visual_mask)
        # Masked slots are pushed far below any real activation (GELU >= -0.17) before the max.
        largest = (regions - (1.0 - keep) * 1.0e4).amax(dim=1) * keep.amax(dim=1)
        total = (regions * keep).sum(dim=1) / SUM_SCALE
        return unit_length(self.head(torch.cat([mean, largest, total], dim=-1)))


class MatchModel(nn.Module):
    """One model, three graphs: ``itm`` (the fusion, logit [B,1]), :meth:`text_embedder` (the same fusion on
    the text alone, with ``text_head``) and ``image_embedder``."""

    def __init__(self, config: FusionConfig, heads: MatchHeadConfig | None = None) -> None:
        super().__init__()
        if config.num_answers != 1:
            raise ValueError(f"num_answers: expected 1 (the ITM logit), received {config.num_answers}")
        self.config = config
        self.heads = heads or MatchHeadConfig()
        self.itm = FusionModel(config)
        self.text_head = nn.Linear(config.hidden, self.heads.embed_dim)
        self.image_embedder = ImageEmbedder(config.visual_dim, self.heads)
        # Temperature of the contrastive loss, learned (log of 1/tau), as in CLIP and ALBEF.
        self.logit_scale = nn.Parameter(torch.tensor(2.7))

    def text_embedder(self) -> TextEmbedder:
        """The text-embedding graph's module (shares the ITM fusion's weights)."""
        return TextEmbedder(self.itm, self.text_head)
