"""nDCG@k and ROC-AUC against values worked out by hand."""

import numpy as np
import pytest

from fusionrt.search.metrics import mean_ndcg, ndcg_at_k, roc_auc


def test_ndcg_by_hand():
    relevant = np.array([False, True, False, True, False])
    # Relevant items at ranks 2 and 3 of 2 relevant: (1/log2(3) + 1/log2(4)) / (1 + 1/log2(3)).
    expected = (1 / np.log2(3) + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    assert ndcg_at_k(np.array([0, 1, 3, 2, 4]), relevant, k=10) == pytest.approx(expected)
    assert ndcg_at_k(np.array([3, 1, 0]), relevant, k=2) == pytest.approx(1.0)
    assert ndcg_at_k(np.array([0, 2, 4]), relevant, k=3) == 0.0
    assert mean_ndcg([np.array([1, 0]), np.array([0, 1])], np.array([[False, True], [False, True]]), k=1) == 0.5


def test_roc_auc_by_hand():
    assert roc_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert roc_auc(np.array([1.0, 4.0]), np.array([2.0, 3.0])) == 0.5
    assert roc_auc(np.array([1.0]), np.array([1.0])) == 0.5  # a tie counts half
    with pytest.raises(ValueError, match="positives and negatives"):
        roc_auc(np.array([]), np.array([1.0]))
