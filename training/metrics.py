"""Ranking and classification metrics: pure functions over numpy arrays.

Ranking metrics share one signature: `(y_true [n, p] of 0/1, scores [n, p], k) -> float`,
with scores of products that must not be ranked (already held) set to -inf by the caller.
"""

from __future__ import annotations

import numpy as np


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores per row, best first, shape [n, k]."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def map_at_k(y_true: np.ndarray, scores: np.ndarray, k: int = 7) -> float:
    """Mean average precision at k as in the Santander competition.

    Rows with no positive score 0 (they stay in the denominator).
    """
    top = _top_k(scores, k)
    hits = np.take_along_axis(y_true, top, axis=1).astype(float)  # [n, k]
    prec = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    n_pos = np.minimum(y_true.sum(1), k)
    ap = np.where(n_pos > 0, (prec * hits).sum(1) / np.maximum(n_pos, 1), 0.0)
    return float(ap.mean()) if len(ap) else 0.0


def ndcg_at_k(y_true: np.ndarray, scores: np.ndarray, k: int = 7) -> float:
    """Normalised discounted cumulative gain at k, averaged over rows with a positive."""
    top = _top_k(scores, k)
    hits = np.take_along_axis(y_true, top, axis=1).astype(float)
    discounts = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))
    dcg = (hits * discounts).sum(1)
    n_pos = np.minimum(y_true.sum(1), hits.shape[1]).astype(int)
    idcg = np.array([discounts[:m].sum() for m in n_pos])
    has = n_pos > 0
    return float((dcg[has] / idcg[has]).mean()) if has.any() else 0.0


def recall_at_k(y_true: np.ndarray, scores: np.ndarray, k: int = 3) -> float:
    """Share of acquired products found in the top k, averaged over rows with a positive."""
    top = _top_k(scores, k)
    hits = np.take_along_axis(y_true, top, axis=1).sum(1)
    n_pos = y_true.sum(1)
    has = n_pos > 0
    return float((hits[has] / n_pos[has]).mean()) if has.any() else 0.0


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the rank statistic (ties get average ranks); NaN if one class."""
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=float).ravel()
    n_pos, n_neg = y.sum(), (~y).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def brier(y_true: np.ndarray, prob: np.ndarray) -> float:
    y = np.asarray(y_true, dtype=float).ravel()
    return float(np.mean((np.asarray(prob, dtype=float).ravel() - y) ** 2))
