"""Training of the matching model (``fusionrt train --task match``) on the scene world (CPU).

Losses per step, over a batch of scenes and one query drawn from each:
- contrastive (dual encoder): each query against every image of the batch, every image against every
  query; several images can be relevant to a query (relevance comes from the ground truth), so the
  target is the set of relevant ones (multi-positive InfoNCE);
- ITM (binary cross-entropy on the fusion's logit): each query with its image (positive), a hard negative
  text one attribute away with the same image, and the most similar irrelevant image of the batch by the
  dual encoder (in-batch hard negative mining, as ALBEF).
The region encoder is the shipped scene-world one, frozen.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fusionrt.data.detector import detect_regions
from fusionrt.data.matching import (
    MatchDatabase,
    MatchQuery,
    hard_negative,
    heldout_database,
    match_corpus,
    query_for_scene,
)
from fusionrt.data.tokenizer import QuestionEncoder, train_tokenizer
from fusionrt.data.world import Scene, generate_scene, render, split_seeds
from fusionrt.model import load_checkpoint, preset
from fusionrt.model.match import MatchModel
from fusionrt.model.match_checkpoint import MatchCheckpoint, save_match_checkpoint
from fusionrt.model.region_encoder import RegionEncoder
from fusionrt.progress import SILENT, Progress
from fusionrt.search.metrics import mean_ndcg, roc_auc
from fusionrt.train import optimizer_step
from fusionrt.train_config import MatchTrainConfig

MAX_REGIONS = 16


class SceneFeatures:
    """Padded region features of many scenes: ``visual`` float32 [S,M,Dv], ``mask`` bool [S,M]."""

    def __init__(self, encoder: RegionEncoder, seeds: list[int], progress: Progress = SILENT,
                 description: str = "scenes") -> None:
        self.scenes: list[Scene] = []
        crops, geometry, counts = [], [], []
        for seed in progress.iterate(seeds, description, unit="scene"):
            scene = generate_scene(seed)
            regions = detect_regions(render(scene), max_regions=MAX_REGIONS)
            self.scenes.append(scene)
            crops.append(regions.crops)
            geometry.append(regions.geometry)
            counts.append(len(regions))
        feats = encode_regions(encoder, np.concatenate(crops), np.concatenate(geometry))
        width = max(1, max(counts, default=0))
        self.visual = torch.zeros((len(seeds), width, encoder.config.feature_dim))
        self.mask = torch.zeros((len(seeds), width), dtype=torch.bool)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        for row, n in enumerate(counts):
            self.visual[row, :n] = feats[offsets[row]:offsets[row] + n]
            self.mask[row, :n] = True


@torch.no_grad()
def encode_regions(encoder: RegionEncoder, crops: np.ndarray, geometry: np.ndarray, batch: int = 4096) -> torch.Tensor:
    """Region features of uint8 crops [R,3,32,32] and geometry [R,5], in batches."""
    return torch.cat([encoder(torch.from_numpy(crops[i:i + batch]).float() / 255.0,
                              torch.from_numpy(geometry[i:i + batch])) for i in range(0, len(crops), batch)]
                     or [torch.zeros((0, encoder.config.feature_dim))])


class QueryTokens:
    """Encodes query texts once each (the grammar is small, so the cache stays small)."""

    def __init__(self, encoder: QuestionEncoder) -> None:
        self.encoder = encoder
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = [self.cache.setdefault(t, self.encoder.encode(t)) if t not in self.cache else self.cache[t]
                   for t in texts]
        length = max(len(e) for e in encoded)
        ids = np.zeros((len(texts), length), dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=bool)
        for row, e in enumerate(encoded):
            ids[row, : len(e)], mask[row, : len(e)] = e, True
        return torch.from_numpy(ids), torch.from_numpy(mask)


def _multi_positive_nce(similarity: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -log(sum of softmax over the relevant columns)."""
    positive = similarity.masked_fill(~relevant, float("-inf")).logsumexp(dim=1)
    return (similarity.logsumexp(dim=1) - positive).mean()


def itm_logits(model: MatchModel, tokens: QueryTokens, texts: list[str], features: SceneFeatures,
               scenes: np.ndarray) -> torch.Tensor:
    """ITM logit [N] of each (text, scene) pair."""
    ids, mask = tokens(texts)
    return model.itm(ids, mask, features.visual[scenes], features.mask[scenes])[1][:, 0]


def _learning_rate(step: int, done: float, config: MatchTrainConfig) -> float:
    """Warm-up over the first steps, then cosine decay over ``done`` (the fraction of the run spent)."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = min(1.0, done)
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def _batch(features: SceneFeatures, rng: np.random.Generator, size: int
           ) -> tuple[np.ndarray, list[MatchQuery], list[MatchQuery | None]]:
    scenes, queries, negatives = [], [], []
    while len(scenes) < size:
        s = int(rng.integers(len(features.scenes)))
        query = query_for_scene(features.scenes[s], rng)
        if query is not None:
            scenes.append(s)
            queries.append(query)
            negatives.append(hard_negative(query, features.scenes[s], rng))
    return np.asarray(scenes), queries, negatives


def train_step(model: MatchModel, tokens: QueryTokens, features: SceneFeatures, rng: np.random.Generator,
               config: MatchTrainConfig) -> torch.Tensor:
    """The loss of one batch (contrastive + ITM)."""
    scenes, queries, negatives = _batch(features, rng, config.scenes_per_step)
    relevant = torch.tensor([[q.relevant(features.scenes[s]) for s in scenes] for q in queries])
    ids, mask = tokens([q.text for q in queries])
    text = model.text_embedder()(ids, mask)
    image = model.image_embedder(features.visual[scenes], features.mask[scenes])
    similarity = model.logit_scale.exp().clamp(max=100.0) * text @ image.T
    contrastive = (_multi_positive_nce(similarity, relevant) + _multi_positive_nce(similarity.T, relevant.T)) / 2
    with torch.no_grad():  # the most similar irrelevant image of the batch, per query
        hardest = similarity.detach().masked_fill(relevant, float("-inf")).argmax(dim=1).numpy()
    has_other = ~relevant.all(dim=1).numpy()
    texts = [q.text for q in queries] + [n.text for n in negatives if n is not None] + \
        [q.text for q, keep in zip(queries, has_other, strict=True) if keep]
    pair_scenes = np.concatenate([scenes, scenes[[n is not None for n in negatives]], scenes[hardest[has_other]]])
    labels = torch.zeros(len(texts))
    labels[: len(queries)] = 1.0
    logits = itm_logits(model, tokens, texts, features, pair_scenes)
    # Two negatives per positive: weigh positives so both classes count equally.
    weight = torch.where(labels > 0, (len(texts) - len(queries)) / len(queries), 1.0)
    itm = nn.functional.binary_cross_entropy_with_logits(logits, labels, weight=weight)
    return contrastive + config.itm_weight * itm


@torch.no_grad()
def evaluate_match(model: MatchModel, tokens: QueryTokens, database: MatchDatabase, features: SceneFeatures,
                   rerank: int = 128, exhaustive_queries: int = 100, batch: int = 2048) -> dict[str, Any]:
    """ITM ROC-AUC and nDCG@10 of the dual encoder alone, of two-stage retrieval (top ``rerank`` re-ranked by
    ITM) and of exhaustive ITM (over the first ``exhaustive_queries`` queries) on the held-out database."""
    model.eval()
    texts = [q.text for q in database.queries]
    ids, mask = tokens(texts)
    text = model.text_embedder()(ids, mask).numpy()
    image = model.image_embedder(features.visual, features.mask).numpy()
    similarity = text @ image.T

    def itm(pairs_text: list[str], pairs_scene: np.ndarray) -> np.ndarray:
        return np.concatenate([itm_logits(model, tokens, pairs_text[i:i + batch], features,
                                          pairs_scene[i:i + batch]).numpy() for i in range(0, len(pairs_text), batch)])

    rng = np.random.default_rng(1)
    positives = itm(texts, database.source_scene)
    hard = [(n.text, s) for n, s in zip(database.hard_negatives, database.source_scene, strict=True) if n is not None]
    irrelevant = [int(rng.choice(np.nonzero(~row)[0])) for row in database.relevance]
    negatives = np.concatenate([itm([t for t, _ in hard], np.asarray([s for _, s in hard])),
                                itm(texts, np.asarray(irrelevant))])
    first_stage = [np.argsort(-row, kind="stable") for row in similarity]
    two_stage = []
    for q, order in enumerate(first_stage):
        top = order[:rerank]
        two_stage.append(top[np.argsort(-itm([texts[q]] * len(top), top), kind="stable")])
    started = time.perf_counter()
    count = min(exhaustive_queries, len(texts))
    exhaustive = [np.argsort(-itm([texts[q]] * similarity.shape[1], np.arange(similarity.shape[1])), kind="stable")
                  for q in range(count)]
    exhaustive_seconds = time.perf_counter() - started
    sub = database.relevance[:count]
    return {
        "itm_roc_auc": roc_auc(positives, negatives),
        "itm_roc_auc_hard_negatives": roc_auc(positives, negatives[: len(hard)]),
        "ndcg10_dual_encoder": mean_ndcg(first_stage, database.relevance),
        "ndcg10_two_stage": mean_ndcg(two_stage, database.relevance),
        "ndcg10_dual_encoder_on_exhaustive_queries": mean_ndcg(first_stage[:count], sub),
        "ndcg10_two_stage_on_exhaustive_queries": mean_ndcg(two_stage[:count], sub),
        "ndcg10_exhaustive_itm": mean_ndcg(exhaustive, sub),
        "exhaustive_queries": count, "exhaustive_seconds": round(exhaustive_seconds, 1),
        "rerank": rerank, "database_scenes": similarity.shape[1], "queries": len(texts),
    }


def train_match(config: MatchTrainConfig, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Train the matching model, evaluate it on the held-out database, write a checkpoint; return the metrics."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    bars = Progress() if progress else SILENT
    queries = QuestionEncoder(train_tokenizer(match_corpus()), preset("small").max_text_len)
    tokens = QueryTokens(queries)
    region_encoder = load_checkpoint().region_encoder.eval()
    for parameter in region_encoder.parameters():
        parameter.requires_grad_(False)
    train_features = SceneFeatures(region_encoder, list(split_seeds("train", config.train_scenes)), bars,
                                   "train scenes")
    model_config = preset("small", vocab_size=queries.vocab_size, num_answers=1,
                          visual_dim=region_encoder.config.feature_dim, hidden=config.hidden, layers=config.layers,
                          heads=config.heads, ffn=config.ffn)
    model = MatchModel(model_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    losses: list[float] = []
    bar = tqdm(range(config.steps), desc="training (match)", disable=not progress, unit="step")
    steps_started = time.perf_counter()
    for step in bar:
        elapsed = time.perf_counter() - steps_started
        done = max(step / config.steps, elapsed / config.time_budget_s if config.time_budget_s else 0.0)
        if done >= 1.0:
            break
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, done, config)
        losses.append(optimizer_step(train_step(model, tokens, train_features, rng, config), optimizer, model))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    train_seconds = time.perf_counter() - started
    database = heldout_database(config.heldout_scenes, config.heldout_queries)
    heldout = SceneFeatures(region_encoder, database.seeds, bars, "held-out scenes")
    metrics = evaluate_match(model, tokens, database, heldout, config.rerank, config.exhaustive_queries)
    metrics.update({
        "train_config": asdict(config), "train_seconds": round(train_seconds, 1), "steps_done": len(losses),
        "total_seconds": round(time.perf_counter() - started, 1),
        "loss_every_10_steps": [round(float(np.mean(losses[i:i + 10])), 4) for i in range(0, len(losses), 10)],
        "parameters": sum(p.numel() for p in model.parameters()),
    })
    save_match_checkpoint(MatchCheckpoint(model.eval(), region_encoder, queries), out_dir, metrics)
    return metrics
