"""Campaign-response model on real data: the UCI bank-marketing telemarketing contacts.

Predicts whether a contacted client subscribes a term deposit, without `duration` (known only
after the call), on a chronological split (the file is ordered by contact date; the most recent
contacts are the test set, as in Moro, Cortez and Rita 2014, whose best model reached ROC AUC
~0.80). The PyTorch model is reported beside LightGBM on the same split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.config import TrainConfig
from nextbest.schema import SchemaError
from nextbest.training import evaluate as ev
from nextbest.training.metrics import roc_auc
from nextbest.training.models import ModelMeta, Preprocessor, predict_proba
from nextbest.training.train import binary_task, fit, fit_temperature, predict_logits

CATEGORICAL = ("job", "marital", "education", "default", "housing", "loan", "contact", "month", "day_of_week",
               "poutcome")
NUMERIC = ("age", "campaign", "pdays", "previous", "emp.var.rate", "cons.price.idx", "cons.conf.idx", "euribor3m",
           "nr.employed")
LEAKY = ("duration",)  # known only after the call
LABEL = "label_subscribed"


def load_contacts(path: Path) -> pd.DataFrame:
    """Reads `bank-additional-full.csv` (semicolon separated) or the adapter's parquet, in file order.

    Raises:
        SchemaError: the file is missing or lacks a required column (named).
    """
    path = Path(path)
    if not path.exists():
        raise SchemaError(f"{path}: file not found")
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, sep=";")
    missing = [c for c in (*CATEGORICAL, *NUMERIC, "y") if c not in df.columns]
    if missing:
        raise SchemaError(f"{path}: missing column(s) {missing} "
                          "(is it the semicolon-separated bank-additional-full.csv?)")
    bad = ~df["y"].isin(["yes", "no"])
    if bad.any():
        row = int(np.argmax(bad.to_numpy()))
        raise SchemaError(f"{path}: column 'y', row {row}: value {df['y'].iloc[row]!r} is not 'yes' or 'no'")
    return df.reset_index(drop=True)


def campaign_frame(contacts: pd.DataFrame) -> pd.DataFrame:
    """Model inputs and label; `pdays` 999 (never contacted) becomes a flag plus a missing value."""
    df = contacts.drop(columns=[c for c in LEAKY if c in contacts.columns]).copy()
    df["never_contacted"] = (df["pdays"] == 999).astype(np.int64)
    df["pdays"] = df["pdays"].where(df["pdays"] != 999, np.nan)
    df[LABEL] = (df["y"] == "yes").astype(np.int64)
    for c in CATEGORICAL:
        df[c] = df[c].astype(str)
    return df


def chrono_thirds(n: int, val_share: float = 0.1, test_share: float = 0.1) -> tuple[slice, slice, slice]:
    """Row ranges of train, validation and test for rows in time order (most recent = test)."""
    test_start = int(round(n * (1 - test_share)))
    val_start = int(round(n * (1 - test_share - val_share)))
    return slice(0, val_start), slice(val_start, test_start), slice(test_start, n)


@dataclass
class CampaignResult:
    metrics: dict[str, float]
    rows: dict[str, int]
    model: object
    meta: ModelMeta


def train_campaign(contacts: pd.DataFrame, cfg: TrainConfig) -> CampaignResult:
    """Trains the PyTorch model and LightGBM on the same chronological split; returns both AUCs."""
    df = campaign_frame(contacts)
    tr, va, te = chrono_thirds(len(df))
    train, val, test = df.iloc[tr], df.iloc[va], df.iloc[te]
    numeric = [*NUMERIC, "never_contacted"]
    pre = Preprocessor.fit(train, numeric, list(CATEGORICAL), cfg.numeric_encoding, cfg.piecewise_bins)
    meta = ModelMeta(task="campaign", feature_service="uci_bank_marketing", preprocessor=pre, outputs=["subscribed"],
                     hidden=list(cfg.hidden), embedding_dim=cfg.embedding_dim, dropout=cfg.dropout)
    data = {name: binary_task(part, pre, LABEL) for name, part in (("train", train), ("val", val), ("test", test))}
    result = fit("campaign", meta, data["train"], data["val"], cfg)
    meta.temperature = fit_temperature(predict_logits(result.model, data["val"]), data["val"].y, data["val"].mask)
    prob = predict_proba(result.model, meta, test).ravel()
    y_test = test[LABEL].to_numpy(float)
    x_tr, x_va, x_te, cats = ev.lightgbm_inputs(train, val, test, numeric, list(CATEGORICAL))
    lgb_prob = ev.lightgbm_binary(x_tr, train[LABEL].to_numpy(float), x_va, val[LABEL].to_numpy(float), x_te, cats,
                                  seed=cfg.seed)
    metrics = {**ev.binary_metrics("test", y_test, prob), **ev.binary_metrics("lightgbm", y_test, lgb_prob),
               "test_positive_rate": float(y_test.mean()), "val_roc_auc": result.best_val,
               "test_alift": alift(y_test, prob), "lightgbm_alift": alift(y_test, lgb_prob)}
    return CampaignResult(metrics, {"train": len(train), "val": len(val), "test": len(test)}, result.model, meta)


def rolling_window(contacts: pd.DataFrame, cfg: TrainConfig, windows: int = 10,
                   test_share: float = 0.1) -> dict[str, float]:
    """Moro et al.'s rolling-window test: the last `test_share` of contacts is cut into `windows`
    consecutive blocks; each block is predicted by models trained on every earlier contact (the
    most recent 10% of those for early stopping). AUCs are computed over all pooled predictions."""
    df = campaign_frame(contacts)
    n = len(df)
    start = int(round(n * (1 - test_share)))
    edges = np.linspace(start, n, windows + 1).astype(int)
    numeric = [*NUMERIC, "never_contacted"]
    probs, lgb_probs, ys = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        history = df.iloc[:lo]
        cut = int(len(history) * 0.9)
        train, val, test = history.iloc[:cut], history.iloc[cut:], df.iloc[lo:hi]
        pre = Preprocessor.fit(train, numeric, list(CATEGORICAL), cfg.numeric_encoding, cfg.piecewise_bins)
        meta = ModelMeta(task="campaign", feature_service="uci_bank_marketing", preprocessor=pre,
                         outputs=["subscribed"], hidden=list(cfg.hidden), embedding_dim=cfg.embedding_dim,
                         dropout=cfg.dropout)
        tr, va, te = (binary_task(part, pre, LABEL) for part in (train, val, test))
        model = fit("campaign", meta, tr, va, cfg).model
        probs.append(predict_logits(model, te).numpy().ravel())
        x_tr, x_va, x_te, cats = ev.lightgbm_inputs(train, val, test, numeric, list(CATEGORICAL))
        lgb_probs.append(ev.lightgbm_binary(x_tr, train[LABEL].to_numpy(float), x_va, val[LABEL].to_numpy(float),
                                            x_te, cats, seed=cfg.seed))
        ys.append(test[LABEL].to_numpy(float))
    y = np.concatenate(ys)
    return {"rolling_test_roc_auc": roc_auc(y, np.concatenate(probs)),
            "rolling_lightgbm_roc_auc": roc_auc(y, np.concatenate(lgb_probs)),
            "rolling_windows": float(windows), "rolling_test_rows": float(len(y))}


def alift(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the cumulative lift (gains) curve, as reported by Moro et al. (random = 0.5)."""
    g = ev.gains_table(y, score, points=100)
    x = np.concatenate([[0.0], g.population.to_numpy()])
    yv = np.concatenate([[0.0], g.captured.to_numpy()])
    return float(np.trapezoid(yv, x))

