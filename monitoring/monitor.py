"""`nextbest monitor`: feature, served-feature, prediction and outcome drift, and one gate.

Writes under `reports/<date>/`: Evidently HTML + JSON per drift section (`data_drift` for the
features, `served_feature_drift`, `prediction_drift`), `summary.json` (every section's numbers and the
gate) and `index.html` (a page linking them). The gate's thresholds are `configs/monitoring.yaml`;
`run_monitor` returns exit code 0 when it passes and 1 when it fails.

Sections:
- feature drift: reference = the champion nbp model's training months (its model.json), current
  = the latest snapshot of the feature tables (`nextbest.monitoring.drift` explains the tests).
- served feature drift: the same reference against the online feature vectors logged at serving
  time (events.db `served_features`), when there are any.
- prediction drift: the champion's scores per product on a sample of the reference window
  against its scores on the latest snapshot, and against the scores it served
  (decisions.context.candidates[].base_prob).
- acceptance: offers shown and accepted per week or month from the decision log, the last
  period against the earlier ones (or, with one period only, against the historical campaigns'
  acceptance in the reference window).
- churn: the champion churn model's predictions on the last snapshot whose outcome has matured
  (`horizon_months` before the latest) against who actually left (the training label of
  `nextbest.training.datasets.churn_labels`), overall and by bins of predicted probability.
- extra sections: callables `(paths, config, out_dir) -> (name, dict, html_path_or_None)`, for
  business KPIs, uplift and off-policy evaluation; a dict with a boolean `passed` joins the gate.
"""

from __future__ import annotations

import html
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from nextbest.config import validated
from nextbest.constants import CHURN_MODEL_NAME, CUSTOMER_ID, EVENT_TIMESTAMP, NBP_MODEL_NAME, PRODUCT_ID, SNAPSHOT_DATE
from nextbest.io import atomic_write, write_json
from nextbest.monitoring import drift as D
from nextbest.settings import Paths, config_file

FEATURE_VIEWS = ("customer_profile", "customer_holdings", "customer_activity", "customer_segments")
REQUIRED_VIEWS = FEATURE_VIEWS[:3]
ACCEPT_EVENTS = ("accept", "convert")
FEATURE_REPORT = "data_drift"  # data_drift.html/.json: the feature-drift report (the name earlier releases used)

ExtraSection = Callable[[Paths, "MonitoringConfig", Path], tuple[str, dict, Optional[Path]]]


# -- configuration -------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ColumnRule(_Strict):
    method: Optional[str] = None
    threshold: Optional[float] = Field(default=None, ge=0)


class ServingSection(_Strict):
    feature_sample_share: float = Field(default=0.05, ge=0, le=1)


class FeatureSection(_Strict):
    include: Optional[list[str]] = None
    exclude: list[str] = []
    numerical_method: str = "wasserstein"
    numerical_threshold: float = Field(default=0.1, gt=0)
    categorical_method: str = "jensenshannon"
    categorical_threshold: float = Field(default=0.1, gt=0)
    per_column: dict[str, ColumnRule] = {}
    natural_variation_multiplier: float = Field(default=1.5, ge=0)
    max_natural_threshold: float = Field(default=0.5, gt=0)
    censor_cap_months: int = Field(default=6, ge=1)
    derived_lookback_months: int = Field(default=6, ge=0)
    lookback: dict[str, int] = {}
    max_categories: int = Field(default=20, ge=2)
    min_rows: int = Field(default=30, ge=2)
    calibration_rows: int = Field(default=20_000, ge=100)
    report_max_rows: int = Field(default=100_000, ge=100)

    @field_validator("numerical_method")
    @classmethod
    def _numerical(cls, v: str) -> str:
        return _check_method(v, D.NUMERICAL_METHODS)

    @field_validator("categorical_method")
    @classmethod
    def _categorical(cls, v: str) -> str:
        return _check_method(v, D.CATEGORICAL_METHODS)

    @field_validator("per_column")
    @classmethod
    def _per_column(cls, v: dict[str, ColumnRule]) -> dict[str, ColumnRule]:
        for column, rule in v.items():
            if rule.method is not None and rule.method not in D.NUMERICAL_METHODS:
                raise ValueError(f"column {column!r}: method must be one of {', '.join(D.NUMERICAL_METHODS)}, "
                                 f"got {rule.method!r}")
        return v

    def settings(self, seed: int) -> D.DriftSettings:
        return D.DriftSettings(
            methods={D.NUMERICAL: self.numerical_method, D.CATEGORICAL: self.categorical_method},
            thresholds={D.NUMERICAL: self.numerical_threshold, D.CATEGORICAL: self.categorical_threshold},
            per_column={c: r.model_dump() for c, r in self.per_column.items()},
            natural_multiplier=self.natural_variation_multiplier, max_natural_threshold=self.max_natural_threshold,
            calibration_rows=self.calibration_rows, min_rows=self.min_rows, max_categories=self.max_categories,
            seed=seed)


class PredictionSection(_Strict):
    method: str = "wasserstein"
    threshold: float = Field(default=0.1, gt=0)
    reference_sample_rows: int = Field(default=20_000, ge=100)

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        return _check_method(v, D.NUMERICAL_METHODS)


class OutcomeSection(_Strict):
    acceptance_period: Literal["week", "month"] = "week"
    maturity_days: float = Field(default=7, ge=0)
    min_offers: int = Field(default=200, ge=1)
    calibration_bins: int = Field(default=10, ge=2)


class GateSection(_Strict):
    max_share_drifted: float = Field(default=0.02, ge=0, le=1)
    never_drift: list[str] = []
    max_drifted_products: int = Field(default=0, ge=0)
    max_acceptance_drop: float = Field(default=0.3, ge=0, le=1)
    max_churn_calibration_gap: float = Field(default=0.05, ge=0, le=1)
    include_served: bool = False


class KpiSection(_Strict):
    since: str | float | None = None   # ISO date or epoch seconds; None: the whole log
    until: str | float | None = None


class UpliftSection(_Strict):
    window_days: float = Field(default=30, gt=0)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    n_boot: int = Field(default=1000, ge=100)
    conversion_feedback: list[Literal["convert", "accept"]] = ["convert"]
    campaigns: dict[str, list[str]] | None = None  # None: configs/bandit.yaml holdout campaigns plus "all"
    since: str | float | None = None
    until: str | float | None = None


class MonitoringConfig(_Strict):
    version: int = 1
    serving: ServingSection = ServingSection()
    features: FeatureSection = FeatureSection()
    predictions: PredictionSection = PredictionSection()
    outcomes: OutcomeSection = OutcomeSection()
    gate: GateSection = GateSection()
    kpi: KpiSection = KpiSection()
    uplift: UpliftSection = UpliftSection()
    seed: int = 42


def _check_method(value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"must be one of {', '.join(allowed)} (distances; p-value tests flag every tiny "
                         f"difference at a bank's row counts), got {value!r}")
    return value


def load_monitoring(path: Path | None = None) -> MonitoringConfig:
    """Loads and validates `configs/monitoring.yaml`.

    Raises:
        ConfigError: missing file, bad YAML, or a bad key or value (the message names it).
    """
    return validated(MonitoringConfig, Path(path) if path else config_file("monitoring.yaml"))


# -- inputs ------------------------------------------------------------------------------------

def load_features(paths: Paths) -> pd.DataFrame:
    """The feature views side by side (they share rows in the same order), one row per customer-month.

    Raises:
        FileNotFoundError: a required feature table is missing (named).
    """
    keys = [CUSTOMER_ID, EVENT_TIMESTAMP]
    frames = []
    for view in FEATURE_VIEWS:
        path = paths.features / f"{view}.parquet"
        if not path.exists():
            if view in REQUIRED_VIEWS:
                raise FileNotFoundError(f"{path}: not found; run `nextbest features build` first")
            continue
        df = pd.read_parquet(path)
        frames.append(df if not frames else df.drop(columns=keys))
    lengths = {len(f) for f in frames}
    if len(lengths) != 1:
        raise ValueError(f"{paths.features}: the feature tables have different row counts ({sorted(lengths)}); "
                         "rebuild them with `nextbest features build`")
    return pd.concat([f.reset_index(drop=True) for f in frames], axis=1)


def champion(paths: Paths, name: str):
    """(model, meta) of `name@champion`, or None when none is registered."""
    if paths.mlflow_uri == paths.local_mlflow_uri and not (paths.mlflow / "mlflow.db").exists():
        return None  # no registry yet: do not create one (nor import MLflow)
    try:
        from nextbest.training.registry import fetch_alias

        local = fetch_alias(paths, name).local_dir
    except LookupError:
        return None
    from nextbest.training.models import from_checkpoint

    return from_checkpoint(local)


def _connect_ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def _has_table(con: sqlite3.Connection, name: str) -> bool:
    return con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def _json_column(db: Path, table: str, column: str) -> list[dict]:
    """Every row's JSON `column` of an events.db table, parsed; empty when the log or the table is absent."""
    if not db.exists():
        return []
    con = _connect_ro(db)
    try:
        if not _has_table(con, table):
            return []
        rows = con.execute(f"SELECT {column} FROM {table}").fetchall()
    finally:
        con.close()
    return [json.loads(r[0]) or {} for r in rows]


def served_features(db: Path) -> pd.DataFrame:
    """events.db `served_features` as a frame (empty when the log or the table is absent)."""
    return pd.DataFrame(_json_column(db, "served_features", "features"))


def served_scores(db: Path) -> pd.DataFrame:
    """One row per decision, one column per candidate product: the base probability it was served with."""
    rows = _json_column(db, "decisions", "context")
    out = []
    for ctx in rows:
        cands = ctx.get("candidates") or []
        row = {c["arm"]: c["base_prob"] for c in cands if c.get("base_prob") is not None and "arm" in c}
        if row:
            out.append(row)
    return pd.DataFrame(out)


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


def _drift_section(prep: _Prepared, current: pd.DataFrame, columns: list[str], settings: D.DriftSettings,
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
    section, files = _drift_section(prep, prep.current, prep.columns, cfg.features.settings(cfg.seed), out_dir,
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
    db = paths.events_db
    if not db.exists():
        return {"status": "no decision log (events.db) yet"}
    con = _connect_ro(db)
    try:
        if not (_has_table(con, "decisions") and _has_table(con, "feedback")):
            return {"status": "the decision log has no decisions/feedback tables"}
        decisions = pd.read_sql_query("SELECT decision_id, created_at, offers FROM decisions", con)
        accepted = pd.read_sql_query(
            f"SELECT DISTINCT decision_id, product_id FROM feedback WHERE event IN "
            f"({','.join('?' * len(ACCEPT_EVENTS))})", con, params=ACCEPT_EVENTS)
    finally:
        con.close()
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
    decisions["shown"] = decisions["offers"].map(lambda s: len(json.loads(s) or []))
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
    horizon = load_train_config("churn").horizon_months
    ts = D.naive_times(features[EVENT_TIMESTAMP])
    months = np.sort(ts.unique())
    if len(months) <= horizon:
        return {"status": f"no matured month: churn needs {horizon} months after a snapshot, the data has "
                          f"{len(months)} snapshots"}
    for name in ("customers", "holdings"):
        if not (paths.raw / f"{name}.parquet").exists():
            raise FileNotFoundError(f"{paths.raw / f'{name}.parquet'}: not found (needed for realised churn)")
    customers = pd.read_parquet(paths.raw / "customers.parquet", columns=[CUSTOMER_ID])
    holdings = pd.read_parquet(paths.raw / "holdings.parquet", columns=[CUSTOMER_ID, SNAPSHOT_DATE, PRODUCT_ID])
    no_events = pd.DataFrame({CUSTOMER_ID: pd.Series([], dtype=str),
                              "event_date": pd.Series([], dtype="datetime64[ns]")})
    labels = churn_labels(customers, holdings, no_events, load_catalogue().ids, horizon)
    label = f"{LABEL_PREFIX}churn"
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


# -- gate and outputs --------------------------------------------------------------------------

@dataclass
class MonitorResult:
    summary: dict
    exit_code: int
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.exit_code == 0


def _feature_checks(name: str, section: dict, gate: GateSection) -> list[dict]:
    checks = [{"check": f"{name}: share of drifted columns", "value": section["share_drifted"],
               "limit": gate.max_share_drifted, "passed": section["share_drifted"] <= gate.max_share_drifted}]
    bad = [c for c in gate.never_drift if c in section["drifted_columns"]]
    checks.append({"check": f"{name}: columns that must never drift", "value": bad, "limit": gate.never_drift,
                   "passed": not bad})
    return checks


def gate_checks(sections: dict[str, dict], gate: GateSection) -> list[dict]:
    """Every check of the gate, with its value, limit and result."""
    checks = _feature_checks("feature_drift", sections["feature_drift"], gate)
    served = sections.get("served_feature_drift") or {}
    if gate.include_served and "share_drifted" in served:
        checks += _feature_checks("served_feature_drift", served, gate)
    pred = sections.get("prediction_drift") or {}
    if "drifted_products" in pred:
        n = len(pred["drifted_products"])
        checks.append({"check": "prediction_drift: products whose scores drifted", "value": pred["drifted_products"],
                       "limit": gate.max_drifted_products, "passed": n <= gate.max_drifted_products})
        served_scores_ = pred.get("served") or {}
        if gate.include_served and "drifted_columns" in served_scores_:
            n = len(served_scores_["drifted_columns"])
            checks.append({"check": "prediction_drift: served scores drifted",
                           "value": served_scores_["drifted_columns"],
                           "limit": gate.max_drifted_products, "passed": n <= gate.max_drifted_products})
    for name, section in sections.items():
        if name in ("feature_drift", "served_feature_drift", "prediction_drift"):
            continue
        if isinstance(section, dict) and isinstance(section.get("passed"), bool):
            value = section.get("relative_drop", section.get("calibration_gap", section.get("value")))
            checks.append({"check": name, "value": value, "limit": section.get("limit"), "passed": section["passed"]})
    return checks


def run_monitor(paths: Paths, config: MonitoringConfig | None = None,
                extra_sections: Sequence[ExtraSection] = (), today: str | None = None,
                on_stage: Callable[[str], None] = lambda s: None) -> MonitorResult:
    """Runs every section, writes the reports under `reports/<today>/` and applies the gate.

    Raises:
        FileNotFoundError: a required input is missing (the message names it).
        ValueError: the data cannot be monitored (for example a single snapshot).
    """
    cfg = config or load_monitoring()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    clock = [started, None]

    def stage(name: str) -> None:
        now = time.perf_counter()
        if clock[1] is not None:
            timings[clock[1]] = round(now - clock[0], 2)
        clock[0], clock[1] = now, name
        on_stage(name)

    out_dir = paths.reports / (today or time.strftime("%Y-%m-%d", time.gmtime()))
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    sections: dict[str, dict] = {}

    stage("load features and the champion models")
    features = load_features(paths)
    nbp = champion(paths, NBP_MODEL_NAME)
    reference_months = None
    source = "every snapshot before the latest (no champion nbp model registered)"
    if nbp is not None:
        reference_months = (nbp[1].extra.get("split_months") or {}).get("train")
        source = "the champion nbp model's training months"
    stage("feature drift")
    prep = prepare_features(features, cfg.features, reference_months, source)
    settings = cfg.features.settings(cfg.seed)
    section, f = _drift_section(prep, prep.current, prep.columns, settings, out_dir, FEATURE_REPORT,
                                cfg.features.report_max_rows)
    section["skipped"] = {**prep.skipped, **section["skipped"]}
    window = {"reference": {"source": prep.reference_source, "months": prep.reference_months},
              "current": {"snapshot": prep.current_month}}
    sections["feature_drift"] = {**window, **section}
    files.update(f)

    served = served_features(paths.events_db)
    if len(served):
        stage("served feature drift")
        served_c, _ = D.censor(served, cfg.features.censor_cap_months)
        cols = [c for c in prep.columns if c in served_c.columns]
        section, f = _drift_section(prep, served_c, cols, settings, out_dir, "served_feature_drift",
                                    cfg.features.report_max_rows)
        sections["served_feature_drift"] = {"reference": window["reference"],
                                            "current": {"source": "events.db served_features", "rows": len(served)},
                                            "not_logged": [c for c in prep.columns if c not in served_c.columns],
                                            **section}
        files.update(f)
    else:
        sections["served_feature_drift"] = {"status": "no served features logged (events.db served_features)"}

    if nbp is not None:
        stage("prediction drift")
        section, f = prediction_section(features, nbp, prep, served_scores(paths.events_db), cfg, out_dir)
        sections["prediction_drift"] = section
        files.update(f)
    else:
        sections["prediction_drift"] = {"status": "no champion nbp model registered"}

    stage("acceptance and churn outcomes")
    sections["acceptance"] = acceptance_section(paths, prep.reference_months, cfg)
    churn = champion(paths, CHURN_MODEL_NAME)
    sections["churn"] = (churn_section(paths, features, churn, cfg) if churn is not None
                         else {"status": "no champion churn model registered"})

    for extra in extra_sections:
        name, data, page = extra(paths, cfg, out_dir)
        sections[name] = data
        if page is not None:
            files[f"{name}_html"] = Path(page)

    stage("gate")
    checks = gate_checks(sections, cfg.gate)
    passed = all(c["passed"] for c in checks)
    feature = sections["feature_drift"]
    summary = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "passed": passed,
        "drifted_columns": feature["drifted_columns"],
        "share_drifted": feature["share_drifted"],
        "columns": feature["columns"],
        "gate": {"passed": passed, "checks": checks},
        "sections": {k: ({kk: vv for kk, vv in v.items() if kk != "columns"} if k == "feature_drift" else v)
                     for k, v in sections.items()},
        "seconds": round(time.perf_counter() - started, 2),
        "stage_seconds": timings,
    }
    files["summary"] = write_json(out_dir / "summary.json", summary)
    files["html"] = atomic_write(out_dir / "index.html", lambda t: Path(t).write_text(_index_html(summary, files)))
    return MonitorResult(summary, 0 if passed else 1, files)


def _index_html(summary: dict, files: dict[str, Path]) -> str:
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(c['check'])}</td><td>{esc(json.dumps(c['value'], default=str))}</td>"
        f"<td>{esc(json.dumps(c['limit'], default=str))}</td>"
        f"<td style='color:{'green' if c['passed'] else 'red'}'>{'pass' if c['passed'] else 'FAIL'}</td></tr>"
        for c in summary["gate"]["checks"])
    links = "".join(f"<li><a href='{esc(p.name)}'>{esc(p.name)}</a></li>"
                    for k, p in files.items() if p.suffix in (".html", ".json") and k != "html")
    statuses = "".join(f"<li><b>{esc(k)}</b>: {esc(v['status'])}</li>" for k, v in summary["sections"].items()
                       if isinstance(v, dict) and "status" in v)
    drifted = ", ".join(summary["drifted_columns"]) or "none"
    verdict = "PASSED" if summary["passed"] else "FAILED"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>nextbest monitoring {verdict}</title></head>"
            f"<body style='font-family:sans-serif'><h1>Monitoring: {verdict}</h1>"
            f"<p>Drifted feature columns ({summary['share_drifted']:.1%}): {esc(drifted)}</p>"
            f"<table border='1' cellpadding='4'><tr><th>check</th><th>value</th><th>limit</th><th>result</th></tr>"
            f"{rows}</table><h2>Reports</h2><ul>{links}<li><a href='summary.json'>summary.json</a></li></ul>"
            f"<h2>Not computed</h2><ul>{statuses or '<li>none</li>'}</ul></body></html>")
