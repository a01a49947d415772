"""The caption decoder's step in buffer form: a KV cache of fixed capacity that the caller owns.

:class:`fusionrt.model.caption.StepGraph` (the concat form) returns a present cache of P+S positions: the
backend allocates it and copies the whole past into it at every step. Here the cache is one buffer of
``max_text_len`` (C) positions per K and V, ``[L,B,heads,C,head_dim]``, that the graph only reads; it returns
the S new keys and values, which the caller writes into the buffer at positions ``position .. position+S-1``
(ONNX Runtime GenAI's ``past_present_share_buffer`` idea, with the write done on the host: an ONNX graph
cannot alias an output to an input). The cost of a step is then the same at every position.

Attention runs over three key blocks without concatenating them: the buffer (slots the caller marked in
``cache_mask``: written and not padding), the new tokens (causal among themselves, ``new_mask``) and the
regions; the three score blocks share one Softmax. Unwritten slots get the mask fill, so their weight is
exactly 0 and the logits equal the concat form's up to summation order.
"""

from __future__ import annotations

import torch
from torch import nn

from fusionrt.model.caption import CaptionDecoder


class BufferStepGraph(nn.Module):
    """Export wrapper: ``(input_ids [B,S], new_mask [B,S], position int64 [1], cache_mask [B,C], cache_key,
    cache_value [L,B,heads,C,head_dim], visual_key, visual_value, visual_mask) -> (logits [B,S,V],
    new_key, new_value [L,B,heads,S,head_dim])``."""

    def __init__(self, decoder: CaptionDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, input_ids: torch.Tensor, new_mask: torch.Tensor, position: torch.Tensor,
                cache_mask: torch.Tensor, cache_key: torch.Tensor, cache_value: torch.Tensor,
                visual_key: torch.Tensor, visual_value: torch.Tensor,
                visual_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = self.decoder
        new = input_ids.shape[1]
        capacity = cache_key.shape[3]
        offsets = torch.arange(new, device=input_ids.device)
        text = d.text_norm(d.token_embedding(input_ids) + d.position_embedding(offsets + position)[None])
        causal = offsets[None, :] <= offsets[:, None]  # [S,S]: new token i sees new tokens j <= i
        allowed = torch.cat([cache_mask[:, None, :].expand(-1, new, -1), causal[None] & new_mask[:, None, :],
                             visual_mask[:, None, :].expand(-1, new, -1)], dim=2)[:, None]  # [B,1,S,C+S+M]
        dtype = d.lm_head.weight.dtype
        bias = torch.where(allowed, torch.zeros((), dtype=dtype), torch.full((), d.config.mask_fill, dtype=dtype))
        has_key = allowed.any(dim=-1, keepdim=True).to(dtype)
        new_keys, new_values = [], []
        for index, layer in enumerate(d.layers):
            normed = layer.attention_norm(text)
            q = layer.split(layer.query(normed) * layer.scale)
            key, value = layer.split(layer.key(normed)), layer.split(layer.value(normed))
            scores = torch.cat([torch.matmul(q, cache_key[index].transpose(-1, -2)),
                                torch.matmul(q, key.transpose(-1, -2)),
                                torch.matmul(q, visual_key[index].transpose(-1, -2))], dim=-1)
            probs = torch.softmax(scores + bias, dim=-1)
            context = (torch.matmul(probs[..., :capacity], cache_value[index])
                       + torch.matmul(probs[..., capacity:capacity + new], value)
                       + torch.matmul(probs[..., capacity + new:], visual_value[index]))
            context = (context * has_key).transpose(1, 2)
            text = text + layer.out(context.reshape(text.shape[0], new, -1))
            text = text + layer.feed_forward(layer.feed_forward_norm(text))
            new_keys.append(key)
            new_values.append(value)
        return d.lm_head(d.final_norm(text)), torch.stack(new_keys), torch.stack(new_values)
