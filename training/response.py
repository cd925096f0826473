"""The campaign-response model on the bank's own data: did a contacted customer accept the offer?

The responses come from `response:` in `configs/campaign.yaml`: the offer history
(`raw/offers.parquet`, each offer a row, accepted = 1, rejected or unanswered = 0; offers of the
last 30 days still unanswered are left out, as they may yet be accepted) or the bank's own
contact table (`customer_id`, `contacted_at`, `label`, optionally `product_id` and `channel`). Each
contact learns from the customer's features at the latest monthly snapshot whose day had ended by then
(what the bank knew when it called), read from Feast through the next-best-product model's feature service
(with the bank's own tables when it has them), plus the offered product and the channel. The split
is by month of contact (a one- or two-month table: customers at random, said so), and the PyTorch
network is reported beside LightGBM on the same split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nextbest.config import TrainConfig
from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP, SNAPSHOT_DATE
from nextbest.features.adapters.canonical import convert_column
from nextbest.features.build import CATEGORICAL_FEATURES, POLICY_FEATURES, snapshot_months
from nextbest.io import read_raw
from nextbest.schema import SchemaError
from nextbest.settings import Paths
from nextbest.training import evaluate as ev
from nextbest.training.datasets import check_labels, sample_split, training_split
from nextbest.training.label_table import STALE_AFTER, read_table_file
from nextbest.training.models import ModelMeta, Preprocessor, predict_proba
from nextbest.training.train import binary_task, fit, fit_temperature, predict_logits

LABEL = "label_response"
CONTEXT = {"product_id": "offered_product", "channel": "offered_channel"}
CONTACT_COLUMNS = {CUSTOMER_ID: "str", "contacted_at": "datetime", "label": "bool"}
RESPONSE_WINDOW = pd.Timedelta(days=30)


@dataclass
class ResponseResult:
    metrics: dict[str, float]
    rows: dict[str, int]
    split: str
    months: dict[str, list[str]]
    source: str


def contacts(paths: Paths, cfg: TrainConfig, products: list[str], report: Callable[[str], None] = print
             ) -> tuple[pd.DataFrame, pd.Series, pd.DatetimeIndex, str]:
    """(contacts with customer_id, contacted_at, label and any context columns; the bank's customers; its
    snapshots; where the contacts came from)."""
    tables = ("customers", "holdings", "offers") if cfg.response.definition == "offers" else ("customers", "holdings")
    raw = read_raw(paths.raw, products, tables=tables)
    customers, snapshots = raw["customers"][CUSTOMER_ID], snapshot_months(raw["holdings"][SNAPSHOT_DATE])
    if cfg.response.definition == "offers":
        offers = raw["offers"]
        # An offer without an answer yet may still be answered: the last RESPONSE_WINDOW's are left out.
        when = pd.to_datetime(offers["offered_at"])
        open_ = (offers["response"] == "no_response") & (when > when.max() - RESPONSE_WINDOW)
        if open_.any():
            report(f"{paths.raw / 'offers.parquet'}: {int(open_.sum()):,} offers of the last {RESPONSE_WINDOW.days} "
                   "days have no response yet and may still get one: left out")
            offers = offers[~open_.to_numpy()]
        frame = pd.DataFrame({CUSTOMER_ID: offers[CUSTOMER_ID].astype(str),
                              "contacted_at": pd.to_datetime(offers["offered_at"]),
                              "label": offers["response"].eq("accept").to_numpy(),
                              "product_id": offers["product_id"].astype(str),
                              "channel": offers["channel"].astype(str)})
        return frame, customers, snapshots, str(paths.raw / "offers.parquet")
    from nextbest.settings import project_relative

    path = project_relative(cfg.response.table)
    raw_table = read_table_file(path, "response.table in configs/campaign.yaml", what="contact table")
    missing = [c for c in CONTACT_COLUMNS if c not in raw_table.columns]
    if missing:
        raise SchemaError(f"{path}: missing column(s) {missing}; a contact table has {list(CONTACT_COLUMNS)} and "
                          f"optionally {list(CONTEXT)} (found {list(raw_table.columns)})")
    kinds = {**CONTACT_COLUMNS, **{c: "str" for c in CONTEXT if c in raw_table.columns}}
    frame = pd.DataFrame({c: convert_column(raw_table[c], kind, str(path), c, 0) for c, kind in kinds.items()})
    for c in CONTACT_COLUMNS:
        empty = frame[c].isna().to_numpy()
        if empty.any():
            i = int(np.argmax(empty))
            raise SchemaError(f"{path}: column '{c}', row {i}: empty value (every contact needs "
                              f"{list(CONTACT_COLUMNS)})")
    return frame, customers, snapshots, str(path)


def response_entity(frame: pd.DataFrame, customers: pd.Series, snapshots: pd.DatetimeIndex, source: str,
                    report: Callable[[str], None] = print) -> pd.DataFrame:
    """Contacts as an entity frame: `customer_id`, `event_timestamp` (the latest snapshot whose day has ended
    by the contact, UTC), `offered_product` / `offered_channel` when known, and `label_response` (int8). Contacts
    of unknown customers, before the first snapshot or more than 31 days after the last are counted,
    reported and left out."""
    months = pd.DatetimeIndex(snapshots).sort_values()
    known = frame[CUSTOMER_ID].isin(set(customers.astype(str))).to_numpy()
    when = pd.to_datetime(frame["contacted_at"])
    dates = (when.dt.tz_convert(None) if when.dt.tz is not None else when).to_numpy(dtype="datetime64[ns]")
    # A snapshot's features count the whole of its day: a contact on that day (whose own outcome the day's
    # offer history may hold) learns from the snapshot before.
    at = np.searchsorted((months + pd.Timedelta(days=1)).values, dates, side="right") - 1
    early = at < 0
    late = dates > (months[-1] + STALE_AFTER).to_datetime64() if len(months) else early
    for count, why in ((int((~known).sum()), "name customers not in raw/customers.parquet"),
                       (int((known & early).sum()), "are dated before the bank's first snapshot"),
                       (int((known & late).sum()), f"are dated more than {STALE_AFTER.days} days after its last")):
        if count:
            report(f"{source}: {count:,} of {len(frame):,} contacts {why}: left out")
    keep = known & ~early & ~late
    if not keep.any():
        raise SchemaError(f"{source}: none of its {len(frame):,} contacts names a customer of the bank within its "
                          "snapshots, so there is nothing to train on")
    out = pd.DataFrame({CUSTOMER_ID: frame[CUSTOMER_ID].to_numpy()[keep],
                        EVENT_TIMESTAMP: pd.DatetimeIndex(months.values[at[keep]]).tz_localize("UTC")})
    for column, name in CONTEXT.items():
        if column in frame.columns:
            out[name] = frame[column].fillna("unknown").astype(str).to_numpy()[keep]
    out[LABEL] = frame["label"].to_numpy()[keep].astype(np.int8)
    return out


def train_response(paths: Paths, cfg: TrainConfig, stage: Callable[[str], None] = print) -> ResponseResult:
    """Trains the network and LightGBM on the bank's contacts; returns both ROC AUCs on the test window."""
    from nextbest.config import load_catalogue
    from nextbest.feature_repo.versions import feature_service_for
    from nextbest.training.pipeline import training_frame

    def warn(line: str) -> None:
        stage(f"WARNING: {line}")

    frame, customers, snapshots, source = contacts(paths, cfg, load_catalogue().ids, warn)
    entity = response_entity(frame, customers, snapshots, source, report=warn)
    labelled = training_split(entity, cfg.val_months, cfg.test_months, cfg.seed)
    if labelled.kind == "random":
        stage(f"WARNING: the contacts span {entity[EVENT_TIMESTAMP].nunique()} month(s): customers are split at "
              "random, so the test figures say how the model ranks other customers of the same months")
    check_labels(labelled, "response", cfg.min_positives, cfg.response.definition)
    service = feature_service_for(paths, "nbp")
    sample = sample_split(labelled, cfg.max_train_rows, cfg.max_eval_rows, cfg.seed)
    drawn = f", drawn at random from {sum(sample.labelled.values()):,}" if sample.sampled else ""
    stage(f"training set (from Feast: {service}, {len(sample.entity):,} contacts{drawn})")
    df = training_frame(paths, sample.entity, service)
    split = training_split(df, cfg.val_months, cfg.test_months, cfg.seed)
    features = [c for c in df.columns if c not in (CUSTOMER_ID, EVENT_TIMESTAMP, LABEL, *POLICY_FEATURES)]
    categorical = [c for c in features if c in CATEGORICAL_FEATURES or c in CONTEXT.values()
                   or not pd.api.types.is_numeric_dtype(df[c])]
    numeric = [c for c in features if c not in categorical]
    stage(f"network and LightGBM ({len(split.train):,} train / {len(split.val):,} val / {len(split.test):,} test)")
    pre = Preprocessor.fit(split.train, numeric, categorical, cfg.numeric_encoding, cfg.piecewise_bins)
    meta = ModelMeta(task="campaign", feature_service=service, preprocessor=pre, outputs=["accepted"],
                     hidden=list(cfg.hidden), embedding_dim=cfg.embedding_dim, dropout=cfg.dropout)
    train, val = binary_task(split.train, pre, LABEL), binary_task(split.val, pre, LABEL)
    result = fit("campaign", meta, train, val, cfg)
    meta.temperature = fit_temperature(predict_logits(result.model, val), val.y, val.mask)
    y = split.test[LABEL].to_numpy(float)
    prob = predict_proba(result.model, meta, split.test).ravel()
    x_tr, x_va, x_te, cats = ev.lightgbm_inputs(split.train, split.val, split.test, numeric, categorical)
    lgb = ev.lightgbm_binary(x_tr, split.train[LABEL].to_numpy(float), x_va, split.val[LABEL].to_numpy(float), x_te,
                             cats, seed=cfg.seed)
    metrics = {**ev.binary_metrics("test", y, prob), **ev.binary_metrics("lightgbm", y, lgb),
               "test_positive_rate": float(y.mean()), "val_roc_auc": result.best_val}
    return ResponseResult(metrics, {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
                          split.kind, split.months, source)
