import numpy as np
import pytest

from nextbest.training.metrics import brier, map_at_k, ndcg_at_k, recall_at_k, roc_auc


def test_map_at_k_hand_computed():
    # Row 1: positives at ranks 1 and 3 -> AP = (1/1 + 2/3) / 2.  Row 2: no positive -> 0.
    y = np.array([[1, 0, 1, 0], [0, 0, 0, 0]])
    s = np.array([[0.9, 0.8, 0.7, 0.1], [0.5, 0.4, 0.3, 0.2]])
    assert map_at_k(y, s, k=7) == pytest.approx(((1 + 2 / 3) / 2 + 0) / 2)


def test_map_at_k_ignores_minus_inf_products_and_caps_at_k():
    y = np.array([[0, 1, 0]])
    s = np.array([[-np.inf, 0.1, 0.5]])
    # The positive is second among the ranked products: AP = 1/2.
    assert map_at_k(y, s, k=2) == pytest.approx(0.5)
    assert map_at_k(y, s, k=1) == pytest.approx(0.0)


def test_ndcg_and_recall_hand_computed():
    y = np.array([[0, 1, 1]])
    s = np.array([[0.9, 0.8, 0.1]])
    dcg = 1 / np.log2(3) + 1 / np.log2(4)
    idcg = 1 + 1 / np.log2(3)
    assert ndcg_at_k(y, s, k=3) == pytest.approx(dcg / idcg)
    assert recall_at_k(y, s, k=2) == pytest.approx(0.5)


@pytest.mark.parametrize("scores,expected", [
    ([0.1, 0.2, 0.8, 0.9], 1.0),
    ([0.9, 0.8, 0.2, 0.1], 0.0),
    ([0.5, 0.5, 0.5, 0.5], 0.5),
    ([0.1, 0.6, 0.4, 0.9], 0.75),
])
def test_roc_auc(scores, expected):
    assert roc_auc(np.array([0, 0, 1, 1]), np.array(scores)) == pytest.approx(expected)


def test_roc_auc_single_class_is_nan_and_brier():
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))
    assert brier(np.array([1, 0]), np.array([0.75, 0.25])) == pytest.approx(0.0625)
