"""A trained model beside the baselines and the oracle on the test month: metrics, per-product and
per-segment details, figures; LightGBM's test scores are cached per training set (`cached_scores`)."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nextbest.config import TrainConfig
from nextbest.training import evaluate as ev
from nextbest.training.models import Model, ModelMeta, predict_proba

if TYPE_CHECKING:
    from nextbest.training.pipeline import Prepared

SEGMENT_COLUMN = "relationship"


@dataclass
class Evaluation:
    metrics: dict[str, float]
    details: dict = field(default_factory=dict)  # JSON-able per-product / per-segment numbers
    figures: dict = field(default_factory=dict)  # file name -> matplotlib figure


def evaluate(prep: "Prepared", model: Model, meta: ModelMeta, cfg: TrainConfig,
             baselines: bool = True, cache: Path | None = None, fresh: bool = False) -> Evaluation:
    """The model beside the baselines and the oracle on the test month; LightGBM's test scores are kept
    in `cache` per training set and reused (`nextbest evaluate` does not refit it).

    `fresh`: the model was just fitted on `prep` with `cfg`; a LightGBM model then is the baseline itself,
    and its scores are the baseline's (never so for a registered model read back, whose data may differ).
    """
    prob = predict_proba(model, meta, prep.split.test)
    own = prob if (fresh and meta.family == "lightgbm" and meta.preprocessor.numeric == prep.numeric
                   and meta.preprocessor.categorical == prep.categorical and meta.extra.get("seed") == cfg.seed) \
        else None
    if prep.task == "nbp":
        return _evaluate_nbp(prep, prob, cfg, baselines, cache, own)
    return _evaluate_churn(prep, prob.ravel(), cfg, baselines, cache, None if own is None else own.ravel())


def _lightgbm(prep: "Prepared", cfg: TrainConfig, cache: Path | None, fit: Callable[[], np.ndarray],
              seconds: dict[str, float]) -> np.ndarray:
    """`fit()`'s test scores, or those kept for the same training set, split, inputs and seed; `seconds`
    gets the time it took, under `LightGBM baseline`."""
    started = time.perf_counter()
    import lightgbm

    # Everything the baseline's scores depend on: the rows and their split, the inputs, the products and
    # their eligibility (the nbp masks), the seed and the LightGBM release.
    key = [prep.task, prep.data_hash, prep.split.kind, prep.split.months, prep.numeric, prep.categorical,
           prep.products, prep.catalogue.model_dump(mode="json") if prep.task == "nbp" else None, cfg.seed,
           lightgbm.__version__, ev.BASELINE_VERSION]
    scores = ev.cached_scores(cache, f"lightgbm-{prep.task}", key, fit)
    seconds["LightGBM baseline"] = round(time.perf_counter() - started, 2)
    return scores


def _evaluate_nbp(prep: "Prepared", prob: np.ndarray, cfg: TrainConfig, baselines: bool,
                  cache: Path | None = None, own: np.ndarray | None = None) -> Evaluation:
    split, products = prep.split, prep.products
    label_cols = [f"label_{p}" for p in products]
    seconds: dict[str, float] = {}

    def arrays(df):
        return df[label_cols].to_numpy(dtype=float), prep.mask(df)

    (y_tr, m_tr), (y_va, m_va), (y_te, m_te) = arrays(split.train), arrays(split.val), arrays(split.test)
    seg_tr = split.train[SEGMENT_COLUMN].to_numpy() if SEGMENT_COLUMN in split.train else None
    seg_te = split.test[SEGMENT_COLUMN].to_numpy() if SEGMENT_COLUMN in split.test else None
    scores = {"test": prob}
    if baselines:
        scores["popularity"] = np.broadcast_to(ev.popularity_scores(y_tr, m_tr, seg_tr, seg_te), y_te.shape)

        def fit() -> np.ndarray:
            x_tr, x_va, x_te, cats = ev.lightgbm_inputs(split.train, split.val, split.test, prep.numeric,
                                                        prep.categorical)
            return ev.lightgbm_nbp(x_tr, y_tr, m_tr, x_va, y_va, m_va, x_te, cats, seed=cfg.seed)

        scores["lightgbm"] = _lightgbm(prep, cfg, cache, fit if own is None else lambda: own, seconds)
    oracle = ev.align_truth(split.test, prep.truth, products)
    if oracle is not None:
        scores["oracle"] = oracle
    result = ev.evaluate_rankers(ev.NbpEvaluation(y_te, m_te, scores, products, seg_te))
    metrics = dict(result.metrics)
    if "oracle_map_at_7" in metrics and metrics["oracle_map_at_7"] > 0:
        metrics["test_map_at_7_vs_oracle"] = metrics["test_map_at_7"] / metrics["oracle_map_at_7"]
    if "lightgbm_map_at_7" in metrics and metrics["lightgbm_map_at_7"] > 0:
        metrics["test_map_at_7_vs_lightgbm"] = metrics["test_map_at_7"] / metrics["lightgbm_map_at_7"]
    figures = {}
    flat_y = (y_te * m_te).ravel()
    rows = m_te.ravel() > 0
    figures["gains_lift.png"] = ev.plot_gains({n: ev.gains_table(flat_y[rows], s.ravel()[rows])
                                               for n, s in scores.items()},
                                              "next-best-product (customer x product)")
    figures["calibration.png"] = ev.plot_calibration({"test": ev.calibration_table(flat_y[rows], prob.ravel()[rows])},
                                                     "next-best-product")
    figures["per_product_auc.png"] = ev.plot_bars(result.per_product_auc, "ROC AUC per product (test month)", "ROC AUC")
    if result.per_segment_map:
        figures["per_segment_map.png"] = ev.plot_bars(result.per_segment_map, f"MAP@7 per {SEGMENT_COLUMN} segment",
                                                      "MAP@7")
    details = {"per_product_auc": result.per_product_auc, "per_segment_map_at_7": result.per_segment_map,
               "seconds": seconds}
    return Evaluation(metrics, details, figures)


def _evaluate_churn(prep: "Prepared", prob: np.ndarray, cfg: TrainConfig, baselines: bool,
                    cache: Path | None = None, own: np.ndarray | None = None) -> Evaluation:
    split = prep.split
    y_te = split.test["label_churn"].to_numpy(dtype=float)
    scores = {"test": prob}
    seconds: dict[str, float] = {}
    if baselines:

        def fit() -> np.ndarray:
            x_tr, x_va, x_te, cats = ev.lightgbm_inputs(split.train, split.val, split.test, prep.numeric,
                                                        prep.categorical)
            return ev.lightgbm_binary(x_tr, split.train["label_churn"].to_numpy(float), x_va,
                                      split.val["label_churn"].to_numpy(float), x_te, cats, seed=cfg.seed)

        scores["lightgbm"] = _lightgbm(prep, cfg, cache, fit if own is None else lambda: own, seconds)
    # The label's event, holding nothing, has a true monthly probability `p_gone` (churning, or every
    # held product closing); banks simulated before it was recorded have only the churn hazard.
    column = "p_gone" if prep.truth is not None and "p_gone" in prep.truth.columns else "p_churn"
    # The truth is that of holding nothing: for churn defined otherwise there is no oracle.
    oracle = ev.align_truth(split.test, prep.truth, [column]) if cfg.label.definition == "holds_nothing" else None
    if oracle is not None:
        # A monthly probability; over the horizon it compounds (same ranking, comparable scale).
        scores["oracle"] = 1 - (1 - oracle.ravel()) ** cfg.horizon_months
    metrics: dict[str, float] = {}
    for name, s in scores.items():
        metrics.update(ev.binary_metrics(name, y_te, s))
    metrics["test_churn_rate"] = float(y_te.mean())
    metrics["test_rows"] = float(len(y_te))
    if "oracle_roc_auc" in metrics and metrics["oracle_roc_auc"] > 0:
        metrics["test_roc_auc_vs_oracle"] = metrics["test_roc_auc"] / metrics["oracle_roc_auc"]
    figures = {
        "gains_lift.png": ev.plot_gains({n: ev.gains_table(y_te, s) for n, s in scores.items()}, "churn"),
        "calibration.png": ev.plot_calibration({n: ev.calibration_table(y_te, s) for n, s in scores.items()}, "churn"),
    }
    details = {"calibration": {n: ev.calibration_table(y_te, s).to_dict(orient="list") for n, s in scores.items()},
               "seconds": seconds}
    return Evaluation(metrics, details, figures)


def log_evaluation(mlflow, evaluation: Evaluation) -> None:
    import matplotlib.pyplot as plt

    mlflow.log_metrics({k: float(v) for k, v in evaluation.metrics.items() if np.isfinite(v)})
    with tempfile.TemporaryDirectory() as tmp:
        for name, fig in evaluation.figures.items():
            fig.savefig(Path(tmp) / name, dpi=90)
            plt.close(fig)
        (Path(tmp) / "evaluation.json").write_text(json.dumps(evaluation.details, indent=1, default=float))
        mlflow.log_artifacts(tmp, artifact_path="evaluation")


