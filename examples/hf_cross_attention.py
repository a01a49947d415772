"""Your own model through fusionrt: a transformers BERT text encoder with cross-attention layers over
projected visual features (the BLIP/ALBEF text-side design), wrapped to fusionrt's fusion contract.

    forward(input_ids int64 [B,T], text_mask bool [B,T], visual_feats float32 [B,M,VISUAL_DIM],
            visual_mask bool [B,M]) -> (hidden float32 [B,T,H], logits float32 [B,NUM_CLASSES])

``make_model()`` is the factory fusionrt loads (``--model examples/hf_cross_attention.py:make_model``).
Weights: seeded random ones, or a safetensors file named by ``FUSIONRT_EXAMPLE_WEIGHTS`` (a state dict of
this module). Needs ``pip install 'fusionrt[examples]'`` (transformers).
"""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers import BertConfig, BertModel
from transformers.models.bert.modeling_bert import BertAttention, BertIntermediate, BertOutput

# The dims fusionrt's flags repeat: --vocab-size, --visual-dim, --max-text-len, --max-visual-len.
VOCAB_SIZE, VISUAL_DIM, MAX_TEXT_LEN, MAX_VISUAL_LEN = 1000, 32, 16, 12
HIDDEN, NUM_CLASSES = 64, 10
WEIGHTS_ENV = "FUSIONRT_EXAMPLE_WEIGHTS"
# Padding's additive attention bias: finite and within FP16's range, so an FP16 graph never computes 0 * -inf.
MASKED = -1.0e4


class CrossAttentionLayer(nn.Module):
    """BERT's cross-attention block (text queries over visual keys), then BERT's feed-forward block."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config, is_cross_attention=True)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, text: torch.Tensor, visual: torch.Tensor, visual_bias: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attention(text, encoder_hidden_states=visual, encoder_attention_mask=visual_bias)
        return self.output(self.intermediate(attended), attended)


class BertCrossAttentionFusion(nn.Module):
    """BertModel over the text, then cross-attention layers over the projected visual features."""

    def __init__(self, text_layers: int = 2, fusion_layers: int = 2) -> None:
        super().__init__()
        self.config = BertConfig(vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, num_hidden_layers=text_layers,
                                 num_attention_heads=4, intermediate_size=2 * HIDDEN,
                                 max_position_embeddings=MAX_TEXT_LEN, attn_implementation="eager")
        self.text = BertModel(self.config, add_pooling_layer=False)
        self.visual_proj = nn.Sequential(nn.Linear(VISUAL_DIM, HIDDEN), nn.LayerNorm(HIDDEN))
        self.fusion = nn.ModuleList(CrossAttentionLayer(self.config) for _ in range(fusion_layers))
        self.classifier = nn.Linear(HIDDEN, NUM_CLASSES)

    def forward(self, input_ids: torch.Tensor, text_mask: torch.Tensor, visual_feats: torch.Tensor,
                visual_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        text = self.text(input_ids=input_ids, attention_mask=text_mask.long()).last_hidden_state
        visual = self.visual_proj(visual_feats)
        visual_bias = (~visual_mask)[:, None, None, :].float() * MASKED  # [B,1,1,M]
        has_visual = visual_mask.any(dim=1)[:, None, None]  # a row without regions keeps its text states
        for layer in self.fusion:
            text = torch.where(has_visual, layer(text, visual, visual_bias), text)
        return text, self.classifier(text[:, 0])


def make_model() -> BertCrossAttentionFusion:
    """The factory fusionrt imports: seeded weights, or the safetensors file named by FUSIONRT_EXAMPLE_WEIGHTS."""
    torch.manual_seed(0)
    model = BertCrossAttentionFusion()
    weights = os.environ.get(WEIGHTS_ENV)
    if weights:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(weights))
    return model.eval()
