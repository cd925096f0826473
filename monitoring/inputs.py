"""What the monitor reads: the feature tables, the champions, and the features and scores the
service logged (events.db, through the read-only `nextbest.eventlog.EventLogReader`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Optional

import pandas as pd

from nextbest.config import MonitoringConfig
from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP
from nextbest.eventlog import EventLogReader
from nextbest.settings import Paths


FEATURE_VIEWS = ("customer_profile", "customer_holdings", "customer_activity", "customer_segments")
REQUIRED_VIEWS = FEATURE_VIEWS[:3]
FEATURE_REPORT = "data_drift"  # data_drift.html/.json: the feature-drift report (the name earlier releases used)

ExtraSection = Callable[[Paths, "MonitoringConfig", Path], tuple[str, dict, Optional[Path]]]



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
    return with_bank_tables(paths, pd.concat([f.reset_index(drop=True) for f in frames], axis=1))


def with_bank_tables(paths: Paths, features: pd.DataFrame) -> pd.DataFrame:
    """`features` with the columns of the bank's own tables (those `configs/features.yaml` declares and those
    any applied feature service version reads), each customer-month taking the table's latest row at or
    before it, within the table's TTL, as training and serving see it."""
    import pyarrow.parquet as pq

    from nextbest.config import load_features_config
    from nextbest.feature_repo.versions import read_record, table_spec

    specs = {table: spec for v in read_record(paths).versions for table, spec in v.spec.items()}
    declared = {t.name: table_spec(t) for t in load_features_config().tables}
    for name in declared:
        if not (paths.features / f"{name}.parquet").exists():
            raise FileNotFoundError(f"{paths.features / f'{name}.parquet'}: not found; run `nextbest features import`")
    specs.update(declared)
    order = features[EVENT_TIMESTAMP].argsort(kind="stable")
    left = features.iloc[order][[CUSTOMER_ID, EVENT_TIMESTAMP]]
    for name, spec in specs.items():
        path = paths.features / f"{name}.parquet"
        if not path.exists():
            continue  # an earlier table, gone: no version reads it any more
        held = set(pq.read_schema(path).names)
        columns = [c for c in spec["columns"] if c in held and c not in features.columns]
        if not columns:
            continue
        bank = pd.read_parquet(path, columns=[CUSTOMER_ID, EVENT_TIMESTAMP, *columns])
        ttl = pd.Timedelta(days=spec["ttl_days"]) if spec["ttl_days"] else None
        joined = pd.merge_asof(left, bank.sort_values(EVENT_TIMESTAMP), on=EVENT_TIMESTAMP, by=CUSTOMER_ID,
                               tolerance=ttl, direction="backward")
        joined.index = left.index
        features = pd.concat([features, joined.loc[features.index, columns]], axis=1)
    return features


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


def served_features(db: Path) -> pd.DataFrame:
    """events.db `served_features` as a frame, one column per feature (empty when there is no log)."""
    try:
        with EventLogReader(db) as log:
            logged = log.served_features(("features",))
    except FileNotFoundError:
        return pd.DataFrame()
    return pd.DataFrame(logged["features"].tolist())


def served_scores(db: Path) -> pd.DataFrame:
    """One row per decision, one column per candidate product: the base probability it was served with."""
    try:
        with EventLogReader(db) as log:
            contexts = log.decisions(("context",))["context"]
    except FileNotFoundError:
        return pd.DataFrame()
    out = []
    for ctx in contexts:
        cands = ctx.get("candidates") or []
        row = {c["arm"]: c["base_prob"] for c in cands if c.get("base_prob") is not None and "arm" in c}
        if row:
            out.append(row)
    return pd.DataFrame(out)
