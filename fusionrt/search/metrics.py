"""Ranking and matching metrics (numpy only): nDCG@k with binary relevance and ROC-AUC."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def ndcg_at_k(ranking: np.ndarray, relevant: np.ndarray, k: int = 10) -> float:
    """nDCG@k of one ranked list of item ids against a bool relevance vector over all items."""
    gains = relevant[np.asarray(ranking[:k], dtype=np.int64)].astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = discounts[: min(k, int(relevant.sum()))].sum()
    return float((gains * discounts[: len(gains)]).sum() / ideal) if ideal > 0 else 0.0


def mean_ndcg(rankings: list[np.ndarray], relevance: np.ndarray, k: int = 10) -> float:
    """Mean nDCG@k of one ranking per query (row ``q`` of ``relevance`` is query q's relevance)."""
    return float(np.mean([ndcg_at_k(r, relevance[q], k) for q, r in enumerate(rankings)]))


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve: the chance a positive scores above a negative (ties count half)."""
    positive, negative = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if not len(positive) or not len(negative):
        raise ValueError(f"roc_auc: expected positives and negatives, received {len(positive)} and {len(negative)}")
    ranks = rankdata(np.concatenate([positive, negative]))  # ties get their average rank
    return float((ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2)
                 / (len(positive) * len(negative)))
