"""The monitor's drift and outcome sections: each takes the monitor's inputs and config and
returns a dict for summary.json (plus the Evidently files it wrote); see `monitor` for the list."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.config import FeatureSection, MonitoringConfig
from nextbest.constants import CHURN_MODEL_NAME, CUSTOMER_ID, EVENT_TIMESTAMP, NBP_MODEL_NAME, PRODUCT_ID, SNAPSHOT_DATE
from nextbest.eventlog import ACCEPTED, EventLogReader
from nextbest.monitoring import drift as D
from nextbest.settings import Paths


from nextbest.monitoring.inputs import FEATURE_REPORT

# -- configuration (the schema is `nextbest.config.MonitoringConfig`) ----------------------------

def drift_settings(section: FeatureSection, seed: int) -> D.DriftSettings:
    """The drift tests that `features:` of configs/monitoring.yaml configures."""
    return D.DriftSettings(
        methods={D.NUMERICAL: section.numerical_method, D.CATEGORICAL: section.categorical_method},
        thresholds={D.NUMERICAL: section.numerical_threshold, D.CATEGORICAL: section.categorical_threshold},
        per_column={c: r.model_dump() for c, r in section.per_column.items()},
        natural_multiplier=section.natural_variation_multiplier, max_natural_threshold=section.max_natural_threshold,
        calibration_rows=section.calibration_rows, min_rows=section.min_rows, max_categories=section.max_categories,
        seed=seed)


# -- sections ----------------------------------------------------------------------------------

@dataclass
class _Prepared:
    """The censored feature frame split into windows, with what each column needs."""

    reference: pd.DataFrame  # warm-up masked
    current: pd.DataFrame
    ref_months: np.ndarray  # month position of each reference row
    columns: list[str]
    kinds: dict[str, str]
    notes: dict[str, dict]
    skipped: dict[str, str]
    reference_months: list[str]
    current_month: str
    reference_source: str


def prepare_features(features: pd.DataFrame, cfg: FeatureSection, reference_months: list[str] | None,
                     reference_source: str) -> _Prepared:
    """Censoring, windows, look-backs and warm-up masking (see `nextbest.monitoring.drift`)."""
    columns = D.feature_columns(features, cfg.include, cfg.exclude)
    data, transforms = D.censor(features[[CUSTOMER_ID, EVENT_TIMESTAMP, *columns]], cfg.censor_cap_months)
    kinds = {c: D.column_kind(data[c], cfg.max_categories) for c in columns}
    months = np.sort(D.naive_times(data[EVENT_TIMESTAMP]).unique())
    reference, current = D.split_windows(data, reference_months)
    if reference.empty:
        raise ValueError("no reference rows: the feature tables hold a single snapshot, or none of the champion's "
                         "training months")
    ref_idx = np.searchsorted(months, D.naive_times(reference[EVENT_TIMESTAMP]).to_numpy())
    cur_idx = len(months) - 1
    lookbacks, notes, skipped, usable = {}, {}, {}, []
    for c in columns:
        lb = D.lookback_months(c, cfg.censor_cap_months, cfg.derived_lookback_months, cfg.lookback)
        notes[c] = {"lookback_months": lb, **({"transform": transforms[c]} if c in transforms else {})}
        if lb > cur_idx or not (ref_idx >= lb).any():
            skipped[c] = (f"needs {lb} months of history; the data's first snapshot is {cur_idx} months before the "
                          f"current one and the reference has no month that old")
            continue
        lookbacks[c] = lb
        usable.append(c)
    masked = D.mask_warmup(reference[usable], ref_idx, lookbacks)
    fmt = lambda ts: pd.Timestamp(ts).strftime("%Y-%m-%d")  # noqa: E731
    return _Prepared(masked, current[usable], ref_idx, usable, kinds, notes, skipped,
                     sorted({fmt(m) for m in months[np.unique(ref_idx)]}), fmt(months[cur_idx]), reference_source)


def drift_section(prep: _Prepared, current: pd.DataFrame, columns: list[str], settings: D.DriftSettings,
                   out_dir: Path, name: str, report_rows: int, with_report: bool = True) -> tuple[dict, dict]:
    summary = D.column_drift(prep.reference, current, columns, settings, months=prep.ref_months,
                             kinds=prep.kinds, notes=prep.notes)
    files = {}
    if with_report and summary.columns:
        snapshot, sample = D.evidently_report(prep.reference, current, summary, report_rows, settings.seed)
        summary.report_sample = sample
        files = {f"{name}_{k}": v for k, v in D.write_report(snapshot, out_dir, name).items()}
    return summary.to_dict(), files


def feature_drift(features: pd.DataFrame, cfg: MonitoringConfig, reference_months: list[str] | None = None,
                  out_dir: Path | None = None, source: str = "every snapshot before the latest") -> tuple[dict, dict]:
    """Feature drift of the latest snapshot against the reference months (all earlier ones if None).

    Writes the Evidently report into `out_dir` when given. Returns (section dict, files).
    """
    prep = prepare_features(features, cfg.features, reference_months, source)
    section, files = drift_section(prep, prep.current, prep.columns, drift_settings(cfg.features, cfg.seed), out_dir,
                                    FEATURE_REPORT, cfg.features.report_max_rows, with_report=out_dir is not None)
    section["skipped"] = {**prep.skipped, **section["skipped"]}
    window = {"reference": {"source": prep.reference_source, "months": prep.reference_months},
              "current": {"snapshot": prep.current_month}}
    return {**window, **section}, files


def _score(model, meta, df: pd.DataFrame, batch: int = 50_000) -> np.ndarray:
    from nextbest.training.models import predict_proba

    parts = [predict_proba(model, meta, df.iloc[i:i + batch]) for i in range(0, len(df), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, len(meta.outputs)), dtype=np.float32)


def _stratified(df: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """At most `rows` rows, the same number from every month."""
    rng = np.random.default_rng(seed)
    month = D.naive_times(df[EVENT_TIMESTAMP]).to_numpy()
    labels = np.unique(month)
    per = max(1, rows // max(len(labels), 1))
    keep = []
    for m in labels:
        idx = np.flatnonzero(month == m)
        keep.append(idx if len(idx) <= per else np.sort(rng.choice(idx, per, replace=False)))
    return df.iloc[np.concatenate(keep)] if keep else df.iloc[:0]


def prediction_section(features: pd.DataFrame, nbp, prep: _Prepared, served: pd.DataFrame, cfg: MonitoringConfig,
                       out_dir: Path) -> tuple[dict, dict]:
    """Score distributions per product: reference sample vs latest snapshot, and vs served scores."""
    model, meta = nbp
    settings = D.DriftSettings(methods={D.NUMERICAL: cfg.predictions.method, D.CATEGORICAL: "jensenshannon"},
                               thresholds={D.NUMERICAL: cfg.predictions.threshold, D.CATEGORICAL: 0.1},
                               natural_multiplier=cfg.features.natural_variation_multiplier,
                               max_natural_threshold=cfg.features.max_natural_threshold,
                               calibration_rows=cfg.features.calibration_rows, min_rows=cfg.features.min_rows,
                               seed=cfg.seed)
    ts = D.naive_times(features[EVENT_TIMESTAMP])
    months = np.sort(ts.unique())
    clients = features["n_products"].to_numpy() > 0 if "n_products" in features else np.ones(len(features), bool)
    in_ref = ts.dt.strftime("%Y-%m-%d").isin(prep.reference_months).to_numpy()
    # Scores inherit the longest look-back of their inputs: warm-up months are left out when others remain.
    idx = np.searchsorted(months, ts.to_numpy())
    warm = idx >= cfg.features.derived_lookback_months
    if (in_ref & warm & clients).any():
        in_ref &= warm
    ref_rows = _stratified(features[in_ref & clients], cfg.predictions.reference_sample_rows, cfg.seed)
    cur_rows = features[(ts == ts.max()).to_numpy() & clients]
    products = list(meta.outputs)
    ref_scores = pd.DataFrame(_score(model, meta, ref_rows), columns=products)
    cur_scores = pd.DataFrame(_score(model, meta, cur_rows), columns=products)
    ref_month = np.searchsorted(months, D.naive_times(ref_rows[EVENT_TIMESTAMP]).to_numpy())
    kinds = {p: D.NUMERICAL for p in products}
    summary = D.column_drift(ref_scores, cur_scores, products, settings, months=ref_month, kinds=kinds)
    files: dict[str, Path] = {}
    if summary.columns:
        snapshot, sample = D.evidently_report(ref_scores, cur_scores, summary, cfg.features.report_max_rows, cfg.seed)
        summary.report_sample = sample
        files = {f"prediction_drift_{k}": v for k, v in D.write_report(snapshot, out_dir, "prediction_drift").items()}
    out = {"model": NBP_MODEL_NAME, "products": summary.to_dict(),
           "drifted_products": summary.drifted_columns,
           "mean_score": {"reference": ref_scores.mean().round(6).to_dict(),
                          "current": cur_scores.mean().round(6).to_dict()}}
    served_cols = [p for p in products if p in served.columns]
    if len(served) and served_cols:
        s = D.column_drift(ref_scores, served[served_cols], served_cols, settings, months=ref_month, kinds=kinds)
        out["served"] = {"decisions": len(served), **s.to_dict()}
    else:
        out["served"] = {"status": "no served scores in events.db"}
    return out, files


def acceptance_section(paths: Paths, reference_months: list[str], cfg: MonitoringConfig) -> dict:
    """Acceptance rate of served offers per period; the last period against the reference."""
    try:
        log = EventLogReader(paths.events_db)
    except FileNotFoundError:
        return {"status": "no decision log (events.db) yet"}
    with log:
        if not {"decisions", "feedback"} <= log.tables:
            return {"status": "the decision log has no decisions/feedback tables"}
        decisions = log.decisions(("decision_id", "created_at", "n_offers"))
        accepted = log.feedback(("decision_id", "product_id"), events=ACCEPTED).drop_duplicates()
    if decisions.empty:
        return {"status": "no decisions logged yet"}
    # Outcomes arrive days after the offer: only decisions older than the maturity window count.
    as_of = max(time.time(), float(decisions["created_at"].max()))
    matured = decisions["created_at"] <= as_of - cfg.outcomes.maturity_days * 86400
    immature = int((~matured).sum())
    decisions = decisions[matured].copy()
    if decisions.empty:
        return {"status": f"no matured decisions yet ({immature} younger than {cfg.outcomes.maturity_days:g} days)",
                "immature_decisions": immature}
    freq = "W-SUN" if cfg.outcomes.acceptance_period == "week" else "M"
    decisions["period"] = (pd.to_datetime(decisions["created_at"], unit="s").dt.to_period(freq)
                           .dt.start_time.dt.strftime("%Y-%m-%d"))
    decisions["shown"] = decisions["n_offers"]
    acc = accepted.merge(decisions[["decision_id", "period"]], on="decision_id")
    table = (decisions.groupby("period")["shown"].sum().to_frame()
             .join(acc.groupby("period").size().rename("accepted")).fillna(0))
    table["rate"] = table["accepted"] / table["shown"].where(table["shown"] > 0)
    periods = [{"period": p, "shown": int(r.shown), "accepted": int(r.accepted),
                "rate": None if pd.isna(r.rate) else float(r.rate)} for p, r in table.iterrows()]
    out = {"period": cfg.outcomes.acceptance_period, "periods": periods, "immature_decisions": immature}
    min_offers = cfg.outcomes.min_offers
    last, earlier = table.iloc[-1], table.iloc[:-1]
    if len(earlier) and last.shown >= min_offers and earlier.shown.sum() >= min_offers:
        ref_rate = float(earlier.accepted.sum() / earlier.shown.sum())
        cur_rate, cur_n = float(last.rate), int(last.shown)
        out["reference"] = {"source": "decision log, earlier periods", "rate": ref_rate,
                            "shown": int(earlier.shown.sum())}
        out["current"] = {"source": f"decision log, period {table.index[-1]}", "rate": cur_rate, "shown": cur_n}
    else:
        total = float(table.shown.sum())
        hist = _historical_acceptance(paths, reference_months)
        if total < min_offers or hist is None:
            out["status"] = (f"not enough offers to compare ({int(total)} shown, {min_offers} needed)"
                             if total < min_offers else "no historical offers in the reference window")
            return out
        ref_rate = hist["rate"]
        cur_rate = float(table.accepted.sum() / total)
        out["reference"] = {"source": "historical campaign offers (raw/offers.parquet) in the reference window", **hist}
        out["current"] = {"source": "decision log, all periods", "rate": cur_rate, "shown": int(total)}
    drop = 1 - cur_rate / ref_rate if ref_rate > 0 else 0.0
    out["relative_drop"] = float(drop)
    out["passed"] = bool(drop <= cfg.gate.max_acceptance_drop)
    out["limit"] = cfg.gate.max_acceptance_drop
    return out


def _historical_acceptance(paths: Paths, reference_months: list[str]) -> dict | None:
    path = paths.raw / "offers.parquet"
    if not path.exists():
        return None
    offers = pd.read_parquet(path, columns=["offered_at", "response"])
    month_end = pd.to_datetime(offers["offered_at"]).dt.to_period("M").dt.end_time.dt.normalize()
    keep = month_end.dt.strftime("%Y-%m-%d").isin(reference_months)
    if not keep.any():
        return None
    chosen = offers[keep.to_numpy()]
    return {"rate": float((chosen["response"] == "accept").mean()), "shown": int(len(chosen))}


def churn_section(paths: Paths, features: pd.DataFrame, churn, cfg: MonitoringConfig) -> dict:
    """Predicted vs realised churn on the last matured snapshot, and the realised rate against training."""
    from nextbest.config import load_catalogue, load_train_config
    from nextbest.training.datasets import LABEL_PREFIX, churn_labels

    model, meta = churn
    train_cfg = load_train_config("churn")
    horizon = train_cfg.horizon_months
    own_labels = train_cfg.label.definition == "table"
    ts = D.naive_times(features[EVENT_TIMESTAMP])
    months = np.sort(ts.unique())
    if len(months) <= horizon and not own_labels:
        return {"status": f"no matured month: churn needs {horizon} months after a snapshot, the data has "
                          f"{len(months)} snapshots"}
    for name in ("customers", "holdings"):
        if not (paths.raw / f"{name}.parquet").exists():
            raise FileNotFoundError(f"{paths.raw / f'{name}.parquet'}: not found (needed for realised churn)")
    customers = pd.read_parquet(paths.raw / "customers.parquet", columns=[CUSTOMER_ID])
    holdings = pd.read_parquet(paths.raw / "holdings.parquet", columns=[CUSTOMER_ID, SNAPSHOT_DATE, PRODUCT_ID])
    no_events = pd.DataFrame({CUSTOMER_ID: pd.Series([], dtype=str),
                              "event_date": pd.Series([], dtype="datetime64[ns]")})
    label = f"{LABEL_PREFIX}churn"
    if own_labels:  # the bank's own labels: the latest labelled snapshot is the matured one
        from nextbest.config.training import label_table_path
        from nextbest.features.build import snapshot_months
        from nextbest.training.label_table import read_label_table

        labels = read_label_table(label_table_path(train_cfg), customers[CUSTOMER_ID],
                                  snapshot_months(holdings[SNAPSHOT_DATE]), report=lambda _: None)
        label_ts = D.naive_times(labels[EVENT_TIMESTAMP])
        labelled = np.intersect1d(label_ts.unique(), months)
        if not len(labelled):
            return {"status": "no snapshot of the features has a label in the bank's label table"}
        matured = pd.Timestamp(labelled[-1])
    else:
        closed = train_cfg.label.products if train_cfg.label.definition == "product_closed" else None
        labels = churn_labels(customers, holdings, no_events, load_catalogue().ids, horizon, closed=closed)
        matured = pd.Timestamp(months[len(months) - 1 - horizon])
        label_ts = D.naive_times(labels[EVENT_TIMESTAMP])
    at = labels[(label_ts == matured).to_numpy()]
    rows = features[(ts == matured).to_numpy()].merge(
        at[[CUSTOMER_ID, label]], on=CUSTOMER_ID)
    if rows.empty:
        return {"status": f"no clients at the matured snapshot {matured:%Y-%m-%d}"}
    pred = _score(model, meta, rows)[:, 0]
    realised = rows[label].to_numpy()
    gap = float(abs(pred.mean() - realised.mean()))
    bins = np.unique(np.quantile(pred, np.linspace(0, 1, cfg.outcomes.calibration_bins + 1)))
    which = np.clip(np.searchsorted(bins, pred, side="right") - 1, 0, max(len(bins) - 2, 0))
    table = [{"bin": int(b), "rows": int((which == b).sum()), "predicted": float(pred[which == b].mean()),
              "realised": float(realised[which == b].mean())} for b in np.unique(which)]
    ece = float(sum(t["rows"] * abs(t["predicted"] - t["realised"]) for t in table) / len(pred))
    train_months = (meta.extra.get("split_months") or {}).get("train") or []
    ref = labels[label_ts.dt.strftime("%Y-%m-%d").isin(train_months).to_numpy()]
    ref_rate = float(ref[label].mean()) if len(ref) else None
    return {"model": CHURN_MODEL_NAME, "horizon_months": horizon, "matured_snapshot": f"{matured:%Y-%m-%d}",
            "clients": int(len(rows)), "predicted_rate": float(pred.mean()), "realised_rate": float(realised.mean()),
            "calibration_gap": gap, "expected_calibration_error": ece, "calibration": table,
            "reference_realised_rate": ref_rate, "reference_months": train_months,
            "passed": bool(gap <= cfg.gate.max_churn_calibration_gap), "limit": cfg.gate.max_churn_calibration_gap}


