"""PyTorch reference decoding: greedy generation with the model's own KV cache, or by full recompute."""

from __future__ import annotations

import torch

from fusionrt.model.caption import CaptionDecoder


@torch.no_grad()
def greedy_torch(decoder: CaptionDecoder, visual_feats: torch.Tensor, visual_mask: torch.Tensor,
                 max_new_tokens: int | None = None, use_cache: bool = True,
                 return_logits: bool = False) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Greedy captions of a batch (token ids after BOS, EOS included when reached) and, with ``return_logits``,
    the logits [B,V] of every step. Rows stop at EOS; the batch stops when every row has."""
    config = decoder.config
    batch = visual_feats.shape[0]
    limit = min(max_new_tokens or config.max_text_len - 1, config.max_text_len - 1)
    ids = torch.full((batch, 1), config.bos_id, dtype=torch.long)
    mask = torch.ones((batch, 1), dtype=torch.bool)
    done = torch.zeros(batch, dtype=torch.bool)
    out: list[list[int]] = [[] for _ in range(batch)]
    step_logits: list[torch.Tensor] = []
    if use_cache:
        visual_key, visual_value = decoder.visual_cache(visual_feats, visual_mask)
        past_key = past_value = decoder.empty_past(batch)
        new = ids
    for _ in range(limit):
        if use_cache:
            logits, past_key, past_value = decoder.step(new, mask, past_key, past_value, visual_key, visual_value,
                                                        visual_mask)
        else:
            logits = decoder(ids, mask, visual_feats, visual_mask)
        last = logits[:, -1]
        if return_logits:
            step_logits.append(last)
        token = last.argmax(-1)
        for row in range(batch):
            if not done[row]:
                out[row].append(int(token[row]))
        done |= token == config.eos_id
        if bool(done.all()):
            break
        new = token[:, None]
        ids = torch.cat([ids, new], dim=1)
        mask = torch.ones_like(ids, dtype=torch.bool)
    return out, step_logits
