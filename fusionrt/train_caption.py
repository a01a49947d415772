"""Training of the caption decoder on the scene world (CPU), over the shipped region encoder's features."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fusionrt.data.caption_set import CaptionSet, build_caption_set
from fusionrt.data.captions import MAX_CAPTION_TOKENS, caption_corpus
from fusionrt.data.tokenizer import QuestionEncoder, question_corpus, train_tokenizer
from fusionrt.data.world import split_seeds
from fusionrt.model import count_parameters, load_checkpoint
from fusionrt.model.caption import CaptionConfig, CaptionDecoder
from fusionrt.model.caption_checkpoint import CaptionCheckpoint, save_caption_checkpoint
from fusionrt.model.caption_decode import greedy_torch
from fusionrt.model.checkpoint import SHIPPED_CHECKPOINT
from fusionrt.progress import SILENT, Progress
from fusionrt.train import _learning_rate, pad_regions
from fusionrt.train_config import CaptionTrainConfig


def caption_tokens() -> QuestionEncoder:
    """The project's WordPiece tokenizer trained on the question templates and the caption grammar together
    (the question vocabulary lacks "," and "and")."""
    return QuestionEncoder(train_tokenizer(question_corpus() + caption_corpus()), MAX_CAPTION_TOKENS)


@torch.no_grad()
def region_features(region_encoder: nn.Module, data: CaptionSet, chunk: int = 4096) -> torch.Tensor:
    parts = [region_encoder(torch.from_numpy(data.crops[i:i + chunk]).float() / 255.0,
                            torch.from_numpy(data.geometry[i:i + chunk])) for i in range(0, len(data.crops), chunk)]
    return torch.cat(parts)


def scene_batch(feats: torch.Tensor, data: CaptionSet, scenes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded ``visual_feats`` [B,M,Dv] and ``visual_mask`` [B,M] of ``scenes``."""
    starts, stops = data.region_offsets[scenes], data.region_offsets[scenes + 1]
    rows = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops, strict=True)])
    return pad_regions(feats[rows], list(stops - starts))


def generated_ids(data: CaptionSet, scene: int) -> list[int]:
    """The target of greedy decoding: the caption's ids after BOS, EOS included."""
    return [int(t) for t in data.input_ids[scene, 1:int(data.text_mask[scene].sum())]]


def evaluate_captions(decoder: CaptionDecoder, feats: torch.Tensor, data: CaptionSet,
                      batch: int = 250) -> dict[str, Any]:
    """Greedy exact match (token-identical caption) on every scene of ``data``, and the generated ids."""
    decoder.eval()
    outputs: list[list[int]] = []
    for start in range(0, len(data), batch):
        scenes = np.arange(start, min(start + batch, len(data)))
        visual, mask = scene_batch(feats, data, scenes)
        outputs += greedy_torch(decoder, visual, mask)[0]
    exact = [out == generated_ids(data, i) for i, out in enumerate(outputs)]
    return {"exact_match": float(np.mean(exact)), "scenes": len(data), "outputs": outputs}


def train_caption(config: CaptionTrainConfig, out_dir: str | Path | None, progress: bool = True,
                  region_checkpoint: str | Path = SHIPPED_CHECKPOINT) -> dict[str, Any]:
    """Train the decoder, measure held-out greedy exact match, and (with ``out_dir``) write a checkpoint."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    bars: Progress = Progress() if progress else SILENT
    tokens = caption_tokens()
    train_set = build_caption_set(split_seeds("train", config.train_scenes), tokens, bars, "train scenes")
    heldout = build_caption_set(split_seeds("heldout", config.heldout_scenes), tokens, bars, "held-out scenes")
    region_encoder = load_checkpoint(region_checkpoint).region_encoder.eval()
    train_feats, heldout_feats = region_features(region_encoder, train_set), region_features(region_encoder, heldout)
    data_seconds = time.perf_counter() - started
    model_config = CaptionConfig(vocab_size=tokens.vocab_size, visual_dim=region_encoder.config.feature_dim,
                                 **config.model_overrides)
    decoder = CaptionDecoder(model_config)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    losses: list[float] = []
    bar = tqdm(range(config.steps), desc="training", disable=not progress, unit="step")
    for step in bar:
        decoder.train()
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, config)
        scenes = rng.integers(0, len(train_set), size=config.batch_scenes)
        visual, visual_mask = scene_batch(train_feats, train_set, scenes)
        length = int(train_set.text_mask[scenes].sum(axis=1).max())
        ids = torch.from_numpy(train_set.input_ids[scenes, :length])
        mask = torch.from_numpy(train_set.text_mask[scenes, :length])
        logits = decoder(ids[:, :-1], mask[:, :-1], visual, visual_mask)
        target = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    train_seconds = time.perf_counter() - started
    result = evaluate_captions(decoder, heldout_feats, heldout)
    metrics = {
        "task": "caption",
        "exact_match": result["exact_match"],
        "heldout_scenes": len(heldout),
        "heldout_seeds": [int(heldout.seeds[0]), int(heldout.seeds[-1]) + 1],
        "train_config": asdict(config),
        "data_seconds": round(data_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "loss_every_10_steps": [round(float(np.mean(losses[i:i + 10])), 5) for i in range(0, len(losses), 10)],
        "loss_first_20": float(np.mean(losses[:20])) if losses else None,
        "loss_last_20": float(np.mean(losses[-20:])) if losses else None,
        "parameters": {"decoder": count_parameters(decoder), "region_encoder (frozen)":
                       sum(p.numel() for p in region_encoder.parameters())},
    }
    if out_dir is not None:
        save_caption_checkpoint(CaptionCheckpoint(decoder.eval(), region_encoder, tokens), out_dir, metrics)
    return metrics
