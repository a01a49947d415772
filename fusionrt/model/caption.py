"""The captioning model: the seed's fusion in decoder form.

Queries come from the text tokens; keys and values are ``[causal text; W·visual]``. Each layer is pre-norm
(``x + Attention(LayerNorm(x))``, ``x + FFN(LayerNorm(x))``) with a final LayerNorm and an LM head. The
regions arrive sorted left to right (:func:`fusionrt.data.captions.region_order`); a learned rank
embedding added to ``W·visual`` tells the decoder which region comes next, as the position table does
for the text.

The forward splits the way a KV cache needs it:

- :meth:`CaptionDecoder.visual_cache`: ``visual_feats`` [B,M,Dv], ``visual_mask`` [B,M] -> the per-layer
  visual keys and values ``[L,B,heads,M,head_dim]``, computed once per image;
- :meth:`CaptionDecoder.step`: new ``input_ids`` [B,S], ``text_mask`` [B,P+S] over every text key so far,
  the past text keys and values ``[L,B,heads,P,head_dim]`` (P may be 0), the visual cache and
  ``visual_mask`` -> ``logits`` [B,S,V] and the present text keys and values ``[L,B,heads,P+S,head_dim]``
  (the past with the new ones appended: a plain Concat);
- :meth:`CaptionDecoder.forward`: the full recompute (step at P=0), used in training and as the reference.

New token ``i`` sits at position ``P + i`` and sees text keys ``0 .. P + i`` that its mask allows plus every
real region. The key mask is one additive bias (0, or a finite fill that float16 holds) before the Softmax,
and a row with no key at all gets zero attention output, as in :mod:`fusionrt.model.fusion`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fusionrt.model.config import config_from_dict


@dataclass(frozen=True)
class CaptionConfig:
    """Hyper-parameters of :class:`CaptionDecoder`. ``bos_id`` / ``eos_id`` / ``pad_id`` are the tokenizer's
    [CLS] / [SEP] / [PAD]."""

    vocab_size: int = 128
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    ffn: int = 512
    visual_dim: int = 69
    max_text_len: int = 48
    max_visual_len: int = 16
    bos_id: int = 2
    eos_id: int = 3
    pad_id: int = 0
    mask_fill: float = -1.0e4
    layer_norm_eps: float = 1.0e-5

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden: expected a multiple of heads={self.heads}, received {self.hidden}")
        if not -65504.0 <= self.mask_fill < 0:
            raise ValueError(f"mask_fill: expected a negative float16 value, received {self.mask_fill}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaptionConfig:
        return config_from_dict(cls, data, "caption config")


class DecoderLayer(nn.Module):
    def __init__(self, config: CaptionConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = config.heads, config.head_dim
        self.scale = 1.0 / math.sqrt(config.head_dim)
        self.attention_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.query = nn.Linear(config.hidden, config.hidden)
        self.key = nn.Linear(config.hidden, config.hidden)
        self.value = nn.Linear(config.hidden, config.hidden)
        self.out = nn.Linear(config.hidden, config.hidden)
        self.feed_forward_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.feed_forward = nn.Sequential(
            nn.Linear(config.hidden, config.ffn), nn.GELU(), nn.Linear(config.ffn, config.hidden))

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """[B,L,hidden] -> [B,heads,L,head_dim]."""
        return x.reshape(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def visual_kv(self, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(self.key(visual)), self.split(self.value(visual))

    def forward(self, text: torch.Tensor, past_key: torch.Tensor, past_value: torch.Tensor,
                visual_key: torch.Tensor, visual_value: torch.Tensor, mask_bias: torch.Tensor,
                has_key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        normed = self.attention_norm(text)
        q = self.split(self.query(normed) * self.scale)
        present_key = torch.cat([past_key, self.split(self.key(normed))], dim=2)
        present_value = torch.cat([past_value, self.split(self.value(normed))], dim=2)
        keys = torch.cat([present_key, visual_key], dim=2)
        values = torch.cat([present_value, visual_value], dim=2)
        probs = torch.softmax(torch.matmul(q, keys.transpose(-1, -2)) + mask_bias, dim=-1)
        context = (torch.matmul(probs, values) * has_key).transpose(1, 2)
        text = text + self.out(context.reshape(text.shape[0], text.shape[1], -1))
        return text + self.feed_forward(self.feed_forward_norm(text)), present_key, present_value


class CaptionDecoder(nn.Module):
    """Cross-attention caption decoder over region features (see the module docstring for the three calls)."""

    def __init__(self, config: CaptionConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden)
        self.position_embedding = nn.Embedding(config.max_text_len, config.hidden)
        self.text_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.visual_projection = nn.Linear(config.visual_dim, config.hidden)
        self.rank_embedding = nn.Embedding(config.max_visual_len, config.hidden)
        self.visual_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.layers))
        self.final_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(config.hidden, config.vocab_size)

    def visual_cache(self, visual_feats: torch.Tensor, visual_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-layer visual keys and values, each [L,B,heads,M,head_dim]. ``visual_mask`` is taken so the graph's
        signature is the cache's contract; masked slots are masked again in every step."""
        ranks = torch.arange(visual_feats.shape[1], device=visual_feats.device)
        visual = self.visual_norm(self.visual_projection(visual_feats) + self.rank_embedding(ranks)[None])
        visual = visual * visual_mask[:, :, None].to(visual.dtype)
        pairs = [layer.visual_kv(visual) for layer in self.layers]
        return torch.stack([k for k, _ in pairs]), torch.stack([v for _, v in pairs])

    def _mask_terms(self, text_mask: torch.Tensor, visual_mask: torch.Tensor,
                    new: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Additive bias [B,1,S,P+S+M] and has-a-key factor [B,1,S,1] for ``new`` = S queries."""
        total = text_mask.shape[1]
        key_positions = torch.arange(total, device=text_mask.device)
        query_positions = key_positions[total - new:]
        causal = key_positions[None, :] <= query_positions[:, None]  # [S, P+S]
        text_allowed = causal[None] & text_mask[:, None, :]  # [B,S,P+S]
        visual_allowed = visual_mask[:, None, :].expand(-1, text_allowed.shape[1], -1)
        allowed = torch.cat([text_allowed, visual_allowed], dim=2)[:, None]
        dtype = self.lm_head.weight.dtype
        bias = torch.where(allowed, torch.zeros((), dtype=dtype), torch.full((), self.config.mask_fill, dtype=dtype))
        return bias, allowed.any(dim=-1, keepdim=True).to(dtype)

    def step(self, input_ids: torch.Tensor, text_mask: torch.Tensor, past_key: torch.Tensor,
             past_value: torch.Tensor, visual_key: torch.Tensor, visual_value: torch.Tensor,
             visual_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits [B,S,V], present_key, present_value)``; see the module docstring."""
        past, new = past_key.shape[3], input_ids.shape[1]
        positions = torch.arange(new, device=input_ids.device) + past
        text = self.text_norm(self.token_embedding(input_ids) + self.position_embedding(positions)[None])
        mask_bias, has_key = self._mask_terms(text_mask, visual_mask, new)
        present_keys, present_values = [], []
        for index, layer in enumerate(self.layers):
            text, key, value = layer(text, past_key[index], past_value[index], visual_key[index],
                                     visual_value[index], mask_bias, has_key)
            present_keys.append(key)
            present_values.append(value)
        logits = self.lm_head(self.final_norm(text))
        return logits, torch.stack(present_keys), torch.stack(present_values)

    def empty_past(self, batch: int) -> torch.Tensor:
        c = self.config
        return torch.zeros((c.layers, batch, c.heads, 0, c.head_dim), dtype=self.lm_head.weight.dtype)

    def forward(self, input_ids: torch.Tensor, text_mask: torch.Tensor, visual_feats: torch.Tensor,
                visual_mask: torch.Tensor) -> torch.Tensor:
        """Full recompute without a cache: ``logits`` [B,T,V]."""
        visual_key, visual_value = self.visual_cache(visual_feats, visual_mask)
        empty = self.empty_past(input_ids.shape[0])
        logits, _, _ = self.step(input_ids, text_mask, empty, empty, visual_key, visual_value, visual_mask)
        return logits


class VisualCacheGraph(nn.Module):
    """Export wrapper: ``(visual_feats, visual_mask) -> (visual_key, visual_value)``."""

    def __init__(self, decoder: CaptionDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, visual_feats: torch.Tensor, visual_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decoder.visual_cache(visual_feats, visual_mask)


class StepGraph(nn.Module):
    """Export wrapper of :meth:`CaptionDecoder.step` with the text mask in two parts, ``past_mask`` [B,P] and
    ``new_mask`` [B,S], so every dim of the graph's contract is one symbol."""

    def __init__(self, decoder: CaptionDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, input_ids: torch.Tensor, new_mask: torch.Tensor, past_mask: torch.Tensor,
                past_key: torch.Tensor, past_value: torch.Tensor, visual_key: torch.Tensor,
                visual_value: torch.Tensor,
                visual_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.decoder.step(input_ids, torch.cat([past_mask, new_mask], dim=1), past_key, past_value,
                                 visual_key, visual_value, visual_mask)
