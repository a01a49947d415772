"""The vision-text cross-attention fusion model.

Text tokens are the queries; keys and values are the text tokens concatenated with the
projected visual region features. Each layer wraps the attention and a GELU feed-forward block
in a residual with a LayerNorm; the LayerNorm comes first in each block (pre-norm) and once more
after the last layer. Pre-norm was measured to train several times faster than the post-norm
of the design article on the 15-minute CPU budget (see README).

The key mask is turned once into an additive bias ``[B,1,1,S]`` (0 for a real key, a finite fill
that fits float16 for a masked one) that every layer adds to the scaled ``Q K^T`` right before the
Softmax: ``MatMul -> Add -> Softmax -> MatMul`` is the attention pattern TensorRT and ModelOpt fuse
(a ``Where`` between the MatMul and the Softmax hides it). A row whose keys are all masked gets
zero attention output instead of NaN or an average of padding: the context is multiplied by a
``[B,1,1,1]`` has-a-key factor after the second MatMul, outside the fused pattern. Outputs equal
the former ``Where`` form: ``exp(score + fill - max)`` underflows to exactly 0 in float32, as
``exp(fill - max)`` did.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fusionrt.model.config import FusionConfig


def attention_mask_terms(key_mask: torch.Tensor, fill: float,
                         dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """From a boolean key mask [B,S]: the additive bias [B,1,1,S] (0 where a key is allowed, ``fill``
    where it is masked) and the has-a-key factor [B,1,1,1] (1.0, or 0.0 for a row with no key at all).
    Computed once per forward and shared by every layer."""
    allowed = key_mask[:, None, None, :]
    # The two scalars live on the mask's device: CPU scalars would be copied to the GPU on every call, which
    # CUDA graph capture refuses (found on an H200 by scripts/gpu_check.py).
    device = key_mask.device
    mask_bias = torch.where(allowed, torch.zeros((), dtype=dtype, device=device),
                            torch.full((), fill, dtype=dtype, device=device))
    has_key = allowed.any(dim=-1, keepdim=True).to(dtype)
    return mask_bias, has_key


class CrossAttention(nn.Module):
    """Multi-head attention of text queries over ``[text; visual]`` keys and values."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.head_dim = config.hidden // config.heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.query = nn.Linear(config.hidden, config.hidden)
        self.key = nn.Linear(config.hidden, config.hidden)
        self.value = nn.Linear(config.hidden, config.hidden)
        self.out = nn.Linear(config.hidden, config.hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, text: torch.Tensor, visual: torch.Tensor, mask_bias: torch.Tensor,
                has_key: torch.Tensor) -> torch.Tensor:
        """``mask_bias`` float [B,1,1,S] (0 or the fill), ``has_key`` float [B,1,1,1] (1 or 0): see
        :func:`attention_mask_terms`."""
        keys_values = torch.cat([text, visual], dim=1)
        # Scaling Q before the first MatMul is the pattern TensorRT fuses into one MHA kernel.
        q = self._split(self.query(text) * self.scale)
        k = self._split(self.key(keys_values))
        v = self._split(self.value(keys_values))
        probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) + mask_bias, dim=-1)
        # A row with no allowed key would otherwise average the masked values; make it zero.
        context = (torch.matmul(probs, v) * has_key).transpose(1, 2)
        batch, length = text.shape[0], text.shape[1]
        return self.out(context.reshape(batch, length, self.heads * self.head_dim))


class FusionLayer(nn.Module):
    """Cross-attention and feed-forward blocks, each ``x + block(LayerNorm(x))``."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.attention = CrossAttention(config)
        self.attention_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.feed_forward = nn.Sequential(
            nn.Linear(config.hidden, config.ffn), nn.GELU(), nn.Linear(config.ffn, config.hidden)
        )
        self.feed_forward_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)

    def forward(self, text: torch.Tensor, visual: torch.Tensor, mask_bias: torch.Tensor,
                has_key: torch.Tensor) -> torch.Tensor:
        text = text + self.attention(self.attention_norm(text), visual, mask_bias, has_key)
        return text + self.feed_forward(self.feed_forward_norm(text))


class FusionModel(nn.Module):
    """Fusion model: ``(input_ids, text_mask, visual_feats, visual_mask) -> (hidden, logits)``.

    Shapes: ``input_ids`` int64 [B,T], ``text_mask`` bool [B,T], ``visual_feats`` float32
    [B,M,Dv], ``visual_mask`` bool [B,M]; ``hidden`` float32 [B,T,H] (zero at padded text
    positions) and ``logits`` float32 [B,A] from a masked mean over real text positions.
    """

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden)
        self.position_embedding = nn.Embedding(config.max_text_len, config.hidden)
        self.text_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.visual_projection = nn.Linear(config.visual_dim, config.hidden)
        self.visual_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(FusionLayer(config) for _ in range(config.layers))
        self.final_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.classifier = nn.Sequential(
            nn.Linear(config.hidden, config.hidden), nn.GELU(), nn.Linear(config.hidden, config.num_answers)
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        text_mask: torch.Tensor,
        visual_feats: torch.Tensor,
        visual_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        text = self.text_norm(self.token_embedding(input_ids) + self.position_embedding(positions)[None])
        visual = self.visual_norm(self.visual_projection(visual_feats))
        mask_bias, has_key = attention_mask_terms(torch.cat([text_mask, visual_mask], dim=1),
                                                  self.config.mask_fill, text.dtype)
        for layer in self.layers:
            text = layer(text, visual, mask_bias, has_key)
        text = self.final_norm(text)
        keep = text_mask[:, :, None].to(text.dtype)
        hidden = text * keep
        count = keep.sum(dim=1).clamp(min=1.0)
        pooled = hidden.sum(dim=1) / count
        return hidden, self.classifier(pooled)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
