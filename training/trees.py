"""The LightGBM model family: the same trees as the LightGBM baseline (one per product for nbp, on the
rows where the product can be acquired; one for churn), fitted on the training months, early-stopped
on the validation month, and kept as a model (`nextbest.trees.TreeScorer`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nextbest.artifact import ModelMeta, Preprocessor
from nextbest.config import TrainConfig
from nextbest.training import evaluate as ev
from nextbest.trees import TreeScorer, tree_matrix

if TYPE_CHECKING:
    from nextbest.training.pipeline import Prepared


def fit_trees(prep: "Prepared", pre: Preprocessor, meta: ModelMeta, cfg: TrainConfig) -> TreeScorer:
    """Fits the family on `prep`'s training and validation months; categories coded by `pre`'s vocabularies."""
    split = prep.split
    x_tr, x_va = tree_matrix(pre, split.train), tree_matrix(pre, split.val)
    cats = list(range(len(pre.numeric), len(pre.numeric) + len(pre.categorical)))
    if prep.task == "nbp":
        labels = [f"label_{p}" for p in prep.products]
        models = ev.fit_lightgbm_nbp(x_tr, split.train[labels].to_numpy(float), prep.mask(split.train), x_va,
                                     split.val[labels].to_numpy(float), prep.mask(split.val), cats, seed=cfg.seed)
    else:
        models = [ev.fit_lightgbm_binary(x_tr, split.train["label_churn"].to_numpy(float), x_va,
                                         split.val["label_churn"].to_numpy(float), cats, seed=cfg.seed)]
    return TreeScorer(models, meta)
