"""Side-by-side evaluation on one test month: the PyTorch model, baselines, LightGBM, the oracle.

Pure functions over arrays and frames, plus plot helpers that return matplotlib figures; the
pipeline logs their output to MLflow. `cached_scores` keeps a baseline's scores per training set.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP
from nextbest.io import atomic_write
from nextbest.training.metrics import brier, map_at_k, ndcg_at_k, recall_at_k, roc_auc
from nextbest.training.models import Preprocessor
from nextbest.trees import predict_outputs, tree_matrix

NEG_INF = -np.inf


@dataclass
class NbpEvaluation:
    """Scores of every ranker on the same test rows (held products at -inf)."""

    y: np.ndarray  # [n, n_products] acquired next month
    mask: np.ndarray  # [n, n_products] 1 = may be acquired (not held)
    scores: dict[str, np.ndarray]  # ranker name -> [n, n_products]
    products: list[str]
    segments: np.ndarray | None = None  # [n] segment label per row
    metrics: dict[str, float] = field(default_factory=dict)
    per_product_auc: dict[str, dict[str, float]] = field(default_factory=dict)
    per_segment_map: dict[str, dict[str, float]] = field(default_factory=dict)


def masked(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask > 0, scores, NEG_INF)


def popularity_scores(train_labels: np.ndarray, train_mask: np.ndarray, train_segments: np.ndarray | None,
                      test_segments: np.ndarray | None) -> np.ndarray:
    """Acquisition rate per product among customers who could acquire it, per segment if given.

    Returns:
        [n_test, n_products] scores (unmasked).
    """
    def rate(rows: np.ndarray) -> np.ndarray:
        return (train_labels[rows] * train_mask[rows]).sum(0) / np.maximum(train_mask[rows].sum(0), 1)

    overall = rate(np.ones(len(train_labels), bool))
    n_test = len(test_segments) if test_segments is not None else None
    if train_segments is None or test_segments is None:
        return overall[None, :]
    out = np.tile(overall, (n_test, 1))
    for seg in np.unique(test_segments):
        rows = train_segments == seg
        if rows.sum() >= 50:  # small segments fall back to the overall rate
            out[test_segments == seg] = rate(rows)
    return out


def lightgbm_matrix(df: pd.DataFrame, pre: Preprocessor) -> tuple[np.ndarray, list[str], list[int]]:
    """Features as LightGBM sees them: raw numeric values plus integer-coded categoricals."""
    names = pre.numeric + pre.categorical
    return tree_matrix(pre, df), names, list(range(len(pre.numeric), len(names)))


def lightgbm_inputs(train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame, numeric: list[str],
                    categorical: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """(x_train, x_val, x_test, categorical column indices), categories coded from the training rows."""
    pre = Preprocessor(numeric, categorical, vocabs={c: sorted(train[c].astype(str).unique()) for c in categorical})
    x_tr, _, cats = lightgbm_matrix(train, pre)
    return x_tr, lightgbm_matrix(val, pre)[0], lightgbm_matrix(test, pre)[0], cats


def _lgb_params(seed: int) -> dict:
    return {"objective": "binary", "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 40,
            "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
            "verbose": -1, "seed": seed, "num_threads": 2, "deterministic": True, "force_row_wise": True}


def fit_lightgbm_nbp(x_train: np.ndarray, y_train: np.ndarray, mask_train: np.ndarray, x_val: np.ndarray,
                     y_val: np.ndarray, mask_val: np.ndarray, categorical: list[int], seed: int = 42,
                     rounds: int = 300) -> list:
    """One binary LightGBM per product on the rows where it can be acquired (the approach of the
    Santander competition's top finishers), early-stopped on the validation month; a product with
    fewer than 5 positives or negatives is its training rate (a float).
    """
    import lightgbm as lgb

    params = _lgb_params(seed)
    # Features are binned once for every product (a product's rows are a subset of the one dataset),
    # not once per product.
    whole = lgb.Dataset(x_train, np.zeros(len(x_train)), categorical_feature=categorical, params=params,
                        free_raw_data=True).construct()
    whole_val = lgb.Dataset(x_val, np.zeros(len(x_val)), reference=whole, categorical_feature=categorical,
                            params=params, free_raw_data=True).construct()
    out: list = []
    for j in range(y_train.shape[1]):
        tr, va = np.flatnonzero(mask_train[:, j] > 0), np.flatnonzero(mask_val[:, j] > 0)
        pos = y_train[tr, j].sum()
        if pos < 5 or len(tr) - pos < 5:
            out.append(float(pos / max(len(tr), 1)))
            continue
        train_set = _rows(whole, tr, y_train[tr, j])
        callbacks = []
        valid_sets = []
        if y_val[va, j].sum() > 0:
            valid_sets = [_rows(whole_val, va, y_val[va, j])]
            callbacks = [lgb.early_stopping(30, verbose=False)]
        booster = lgb.train(params, train_set, num_boost_round=rounds, valid_sets=valid_sets, callbacks=callbacks)
        out.append(_best(booster))
    return out


def _rows(dataset, rows: np.ndarray, label: np.ndarray):
    """The rows of a constructed LightGBM dataset, with their own label, binned as the whole is."""
    part = dataset.subset(rows.tolist()).construct()
    part.set_label(label)
    return part


def _best(booster):
    """The booster cut at its best iteration, so that every later prediction uses it (and it is what is saved)."""
    import lightgbm as lgb

    if not booster.best_iteration:
        return booster
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))


def lightgbm_nbp(x_train: np.ndarray, y_train: np.ndarray, mask_train: np.ndarray, x_val: np.ndarray,
                 y_val: np.ndarray, mask_val: np.ndarray, x_test: np.ndarray, categorical: list[int],
                 seed: int = 42, rounds: int = 300) -> np.ndarray:
    """`fit_lightgbm_nbp`'s [n_test, n_products] probabilities (unmasked)."""
    return predict_outputs(fit_lightgbm_nbp(x_train, y_train, mask_train, x_val, y_val, mask_val, categorical,
                                            seed, rounds), x_test)


def fit_lightgbm_binary(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                        categorical: list[int], seed: int = 42, rounds: int = 500):
    """One binary LightGBM (churn, campaign response), early-stopped on validation."""
    import lightgbm as lgb

    train_set = lgb.Dataset(x_train, y_train, categorical_feature=categorical, free_raw_data=False)
    valid = lgb.Dataset(x_val, y_val, categorical_feature=categorical, reference=train_set)
    booster = lgb.train(_lgb_params(seed), train_set, num_boost_round=rounds, valid_sets=[valid],
                        callbacks=[lgb.early_stopping(50, verbose=False)])
    return _best(booster)


def lightgbm_binary(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                    x_test: np.ndarray, categorical: list[int], seed: int = 42, rounds: int = 500) -> np.ndarray:
    """`fit_lightgbm_binary`'s test probabilities."""
    return fit_lightgbm_binary(x_train, y_train, x_val, y_val, categorical, seed, rounds).predict(x_test)


def evaluate_rankers(ev: NbpEvaluation, k: int = 7) -> NbpEvaluation:
    """Fills MAP@k, NDCG@k, recall@3, per-product ROC AUC and per-segment MAP@k for every ranker."""
    for name, raw in ev.scores.items():
        s = masked(raw, ev.mask)
        ev.metrics[f"{name}_map_at_{k}"] = map_at_k(ev.y, s, k)
        ev.metrics[f"{name}_ndcg_at_{k}"] = ndcg_at_k(ev.y, s, k)
        ev.metrics[f"{name}_recall_at_3"] = recall_at_k(ev.y, s, 3)
        aucs = {}
        for j, p in enumerate(ev.products):
            rows = ev.mask[:, j] > 0
            aucs[p] = roc_auc(ev.y[rows, j], raw[rows, j])
        ev.per_product_auc[name] = aucs
        finite = [v for v in aucs.values() if np.isfinite(v)]
        ev.metrics[f"{name}_mean_product_auc"] = float(np.mean(finite)) if finite else float("nan")
        if ev.segments is not None:
            ev.per_segment_map[name] = {str(seg): map_at_k(ev.y[ev.segments == seg], s[ev.segments == seg], k)
                                        for seg in np.unique(ev.segments)}
    ev.metrics["test_positive_rate"] = float((ev.y.sum(1) > 0).mean())
    ev.metrics["test_rows"] = float(len(ev.y))
    return ev


def binary_metrics(name: str, y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    return {f"{name}_roc_auc": roc_auc(y, prob), f"{name}_brier": brier(y, prob)}


def calibration_table(y: np.ndarray, prob: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Mean predicted against observed rate per quantile bin of the prediction."""
    y, prob = np.asarray(y, float).ravel(), np.asarray(prob, float).ravel()
    edges = np.unique(np.quantile(prob, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges, prob, side="right") - 1, 0, max(len(edges) - 2, 0))
    df = pd.DataFrame({"bin": idx, "y": y, "p": prob})
    return df.groupby("bin").agg(predicted=("p", "mean"), observed=("y", "mean"), n=("y", "size")).reset_index()


def gains_table(y: np.ndarray, score: np.ndarray, points: int = 20) -> pd.DataFrame:
    """Cumulative gains: share of positives captured in the top x% by score, and the lift."""
    y, score = np.asarray(y, float).ravel(), np.asarray(score, float).ravel()
    order = np.argsort(-score, kind="stable")
    captured = np.cumsum(y[order]) / max(y.sum(), 1)
    share = np.arange(1, len(y) + 1) / len(y)
    at = np.unique(np.clip((np.linspace(0, 1, points + 1)[1:] * len(y)).astype(int) - 1, 0, len(y) - 1))
    return pd.DataFrame({"population": share[at], "captured": captured[at], "lift": captured[at] / share[at]})


# -- plots (matplotlib figures; the caller saves or logs them) ----------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_gains(curves: dict[str, pd.DataFrame], title: str):
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, g in curves.items():
        a.plot(g.population, g.captured, marker=".", label=name)
        b.plot(g.population, g.lift, marker=".", label=name)
    a.plot([0, 1], [0, 1], "k--", lw=0.8, label="random")
    a.set(xlabel="share of customers contacted", ylabel="share of positives captured", title=f"{title}: gains")
    b.axhline(1, color="k", ls="--", lw=0.8)
    b.set(xlabel="share of customers contacted", ylabel="lift", title=f"{title}: lift")
    a.legend()
    fig.tight_layout()
    return fig


def plot_calibration(tables: dict[str, pd.DataFrame], title: str):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    top = 0.0
    for name, t in tables.items():
        ax.plot(t.predicted, t.observed, marker="o", label=name)
        top = max(top, t.predicted.max(), t.observed.max())
    ax.plot([0, top], [0, top], "k--", lw=0.8, label="perfect")
    ax.set(xlabel="mean predicted probability", ylabel="observed rate", title=f"{title}: calibration")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_bars(values: dict[str, dict[str, float]], title: str, ylabel: str):
    """Grouped bars: one group per key of the inner dicts, one bar per ranker."""
    plt = _plt()
    names = list(values)
    keys = list(next(iter(values.values())).keys()) if values else []
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(keys) * max(len(names), 1)), 4.5))
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(keys))
    for i, name in enumerate(names):
        ax.bar(x + i * width, [np.nan_to_num(values[name].get(k, np.nan)) for k in keys], width, label=name)
    ax.set_xticks(x + width * (len(names) - 1) / 2, keys, rotation=60, ha="right")
    ax.set(ylabel=ylabel, title=title)
    ax.legend()
    fig.tight_layout()
    return fig


# Part of every kept baseline's key: a change to how the baselines are fitted (parameters, rounds) bumps it.
BASELINE_VERSION = 1


def cached_scores(cache: Path | None, name: str, key: list, fit: Callable[[], np.ndarray], keep: int = 4) -> np.ndarray:
    """`fit()`, or the scores kept in `cache/<name>-<hash of key>.npy` by an earlier call with the same key; the
    `keep` most recently used files per name are kept."""
    if cache is None:
        return fit()
    path = cache / f"{name}-{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:20]}.npy"
    if path.exists():
        try:
            scores = np.load(path, allow_pickle=False)
            path.touch()
            return scores
        except (OSError, ValueError):  # a damaged file: fit again
            pass
    scores = fit()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(scores), allow_pickle=False)

    try:
        atomic_write(path, write)
        kept = sorted(cache.glob(f"{name}-*.npy"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in kept[keep:]:
            old.unlink(missing_ok=True)
    except OSError:  # a full disk or a read-only folder: the scores are used, just not kept
        pass
    return scores


def load_truth(truth_dir: Path, name: str) -> pd.DataFrame | None:
    """The simulator's truth table `truth/<name>.parquet` keyed by customer and UTC time (None without one)."""
    path = truth_dir / f"{name}.parquet"
    if not path.exists():
        return None
    df = pd.read_parquet(path)
    df[EVENT_TIMESTAMP] = pd.to_datetime(df.pop("snapshot_date")).dt.tz_localize("UTC")
    return df


def align_truth(df: pd.DataFrame, truth: pd.DataFrame | None, columns: list[str]) -> np.ndarray | None:
    """The truth's `columns` for `df`'s rows, or None when some row has none (the oracle then stays out)."""
    if truth is None:
        return None
    merged = df[[CUSTOMER_ID, EVENT_TIMESTAMP]].merge(truth, on=[CUSTOMER_ID, EVENT_TIMESTAMP], how="left")
    values = merged[columns].to_numpy(dtype=float)
    return None if np.isnan(values).any() else values
