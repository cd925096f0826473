"""Train one model end to end: labels -> Feast training set -> PyTorch -> evaluation -> MLflow.

This is the I/O edge of `training/`: it reads the work directory, calls the pure pieces and
writes to MLflow. The CLI and quickstart call `train_model`.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from features.build import CATEGORICAL_FEATURES, POLICY_FEATURES
from nextbest.config import TrainConfig, load_catalogue
from nextbest.constants import (CHURN_FEATURE_SERVICE, CHURN_MODEL_NAME, CUSTOMER_ID, EVENT_TIMESTAMP,
                                NBP_FEATURE_SERVICE, NBP_MODEL_NAME)
from nextbest.io import read_raw
from nextbest.settings import Paths
from training import registry
from training.datasets import chrono_split, churn_labels, label_columns, nbp_labels
from training.metrics import brier, map_at_k, ndcg_at_k, recall_at_k, roc_auc
from training.models import ModelMeta, Preprocessor, save_checkpoint
from training.train import (churn_task, fit, fit_temperature, masked_scores, nbp_task, predict_logits)

log = logging.getLogger(__name__)

TASKS = {
    "nbp": (NBP_FEATURE_SERVICE, NBP_MODEL_NAME),
    "churn": (CHURN_FEATURE_SERVICE, CHURN_MODEL_NAME),
}


@dataclass
class TrainResult:
    task: str
    run_id: str
    version: str
    metrics: dict[str, float]
    months: dict[str, list[str]]
    rows: dict[str, int]
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def training_frame(paths: Paths, entity_df: pd.DataFrame, feature_service: str) -> pd.DataFrame:
    """Point-in-time training set from Feast: the entity frame joined with the service's features."""
    from feature_repo.store import open_store

    store = open_store(paths)
    job = store.get_historical_features(entity_df=entity_df, features=store.get_feature_service(feature_service))
    df = job.to_df()
    return df.sort_values([EVENT_TIMESTAMP, CUSTOMER_ID]).reset_index(drop=True)


def data_hash(df: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes()).hexdigest()[:16]


def _truth(paths: Paths, name: str) -> pd.DataFrame | None:
    path = paths.truth / f"{name}.parquet"
    if not path.exists():
        return None
    df = pd.read_parquet(path)
    df[EVENT_TIMESTAMP] = pd.to_datetime(df.pop("snapshot_date")).dt.tz_localize("UTC")
    return df


def _align(df: pd.DataFrame, truth: pd.DataFrame, columns: list[str]) -> np.ndarray | None:
    merged = df[[CUSTOMER_ID, EVENT_TIMESTAMP]].merge(truth, on=[CUSTOMER_ID, EVENT_TIMESTAMP], how="left")
    values = merged[columns].to_numpy(dtype=float)
    return None if np.isnan(values).any() else values


def evaluate_nbp(model, meta: ModelMeta, train_df: pd.DataFrame, test_df: pd.DataFrame, products: list[str],
                 truth: pd.DataFrame | None) -> dict[str, float]:
    """Model, popularity baseline and oracle on the same test month (MAP@7 etc.)."""
    test = nbp_task(test_df, meta.preprocessor, products)
    y = test.y.numpy()
    scores = masked_scores(predict_logits(model, test), test.mask)
    out = {
        "test_map_at_7": map_at_k(y, scores, 7),
        "test_ndcg_at_7": ndcg_at_k(y, scores, 7),
        "test_recall_at_3": recall_at_k(y, scores, 3),
    }
    popularity = train_df[[f"label_{p}" for p in products]].mean().to_numpy()
    pop_scores = masked_scores(torch.from_numpy(np.tile(popularity, (len(y), 1))), test.mask)
    out["popularity_map_at_7"] = map_at_k(y, pop_scores, 7)
    if truth is not None:
        true_p = _align(test_df, truth, products)
        if true_p is not None:
            out["oracle_map_at_7"] = map_at_k(y, masked_scores(torch.from_numpy(true_p), test.mask), 7)
    out["test_positive_rate"] = float((y.sum(1) > 0).mean())
    return out


def evaluate_churn(model, meta: ModelMeta, test_df: pd.DataFrame, truth: pd.DataFrame | None) -> dict[str, float]:
    test = churn_task(test_df, meta.preprocessor)
    y = test.y.numpy().ravel()
    prob = torch.sigmoid(predict_logits(model, test) / meta.temperature).numpy().ravel()
    out = {"test_roc_auc": roc_auc(y, prob), "test_brier": brier(y, prob), "test_churn_rate": float(y.mean())}
    if truth is not None:
        true_p = _align(test_df, truth, ["p_churn"])
        if true_p is not None:
            out["oracle_roc_auc"] = roc_auc(y, true_p.ravel())
    return out


def train_model(paths: Paths, task: str, cfg: TrainConfig,
                on_epoch: Callable[[int, dict[str, float]], None] | None = None,
                on_stage: Callable[[str], None] | None = None) -> TrainResult:
    """Trains, evaluates, logs and registers one model; the new version becomes `champion`."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    stage = on_stage or (lambda s: log.info(s))
    started = time.perf_counter()
    service, model_name = TASKS[task]
    catalogue = load_catalogue()
    products = catalogue.ids
    torch.set_num_threads(max(1, torch.get_num_threads()))

    stage("labels from holdings")
    raw = read_raw(paths.raw, products, tables=("customers", "holdings", "interactions"))
    if task == "nbp":
        entity = nbp_labels(raw["customers"], raw["holdings"], raw["interactions"], products)
    else:
        entity = churn_labels(raw["customers"], raw["holdings"], raw["interactions"], products, cfg.horizon_months)
    stage(f"training set from Feast ({service}, {len(entity):,} rows)")
    df = training_frame(paths, entity, service)
    split = chrono_split(df, cfg.val_months, cfg.test_months)
    labels = label_columns(df)
    features = [c for c in df.columns if c not in (CUSTOMER_ID, EVENT_TIMESTAMP, *labels, *POLICY_FEATURES)]
    categorical = [c for c in CATEGORICAL_FEATURES if c in features]
    numeric = [c for c in features if c not in categorical]
    pre = Preprocessor.fit(split.train, numeric, categorical)
    outputs = products if task == "nbp" else ["churn"]
    meta = ModelMeta(task=task, feature_service=service, preprocessor=pre, outputs=outputs,
                     hidden=list(cfg.hidden), embedding_dim=cfg.embedding_dim, dropout=cfg.dropout)
    make = (lambda d: nbp_task(d, pre, products)) if task == "nbp" else (lambda d: churn_task(d, pre))
    train_data, val_data = make(split.train), make(split.val)

    stage(f"training {task} ({len(split.train):,} train / {len(split.val):,} val / {len(split.test):,} test rows)")
    result = fit(task, meta, train_data, val_data, cfg, on_epoch=on_epoch)
    val_logits = predict_logits(result.model, val_data)
    meta.temperature = fit_temperature(val_logits, val_data.y, val_data.mask)
    meta.extra = {"split_months": split.months, "best_epoch": result.best_epoch}

    stage("evaluating on the test month")
    if task == "nbp":
        metrics = evaluate_nbp(result.model, meta, split.train, split.test, products, _truth(paths, "acquisition"))
    else:
        metrics = evaluate_churn(result.model, meta, split.test, _truth(paths, "churn"))
    metrics["val_metric"] = result.best_val

    stage("logging to MLflow and registering")
    mlflow = registry.tracking(paths)
    exp = registry.experiment_id(paths, task)
    with mlflow.start_run(experiment_id=exp, run_name=f"{task}-{time.strftime('%Y%m%d-%H%M%S')}") as run:
        mlflow.log_params({**cfg.model_dump(exclude={"hidden"}), "hidden": ",".join(map(str, cfg.hidden)),
                           "feature_service": service, "n_features": len(features),
                           "train_rows": len(split.train), "data_hash": data_hash(df)})
        mlflow.set_tags({"feature_service": service, "task": task,
                         "test_month": ",".join(split.months["test"])})
        client = mlflow.MlflowClient()
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        epoch_metrics = [Metric(k, float(v), now, int(h["epoch"])) for h in result.history
                         for k, v in h.items() if k != "epoch"]
        for i in range(0, len(epoch_metrics), 900):  # one call per batch, not per epoch
            client.log_batch(run.info.run_id, metrics=epoch_metrics[i:i + 900])
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = save_checkpoint(Path(tmp) / registry.MODEL_ARTIFACT_PATH, result.model, meta)
            mlflow.log_artifacts(str(ckpt), artifact_path=registry.MODEL_ARTIFACT_PATH)
        run_id = run.info.run_id
    version = registry.register(paths, model_name, run_id)
    return TrainResult(task, run_id, version, metrics, split.months,
                       {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
                       time.perf_counter() - started, result.history)
