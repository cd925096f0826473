"""One versioned FeatureService per model, used by name in training and in serving; versions with the
bank's own feature tables (`feature_repo.versions`)."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureService, FeatureView, OnDemandFeatureView
from feast.types import String

from nextbest.constants import (CHURN_FEATURE_SERVICE, CHURN_FEATURE_SERVICE_V1, NBP_FEATURE_SERVICE,
                                OFFER_CONTEXT_FEATURE_SERVICE, REALTIME_VIEW)
from nextbest.feature_repo.features import feature_view
from nextbest.feature_repo.versions import BASE_SERVICES, ServiceRecord, read_record, table_spec
from nextbest.features.build import ACTIVITY_VIEW, HOLDINGS_VIEW, PROFILE_VIEW, SEGMENTS_VIEW, VIEWS
from nextbest.settings import Paths

log = logging.getLogger(__name__)

CHURN_HOLDINGS_FEATURES = ("n_products", "n_products_change_3m", "months_since_acquisition", "months_since_closure",
                           "total_balance", "balance_change_3m", "balance_change_6m")
# `held_<product>` (this month's holdings), not its lags `held_lag<k>_<product>`.
_HELD_NOW = re.compile(r"held_(?!lag\d+_)")


def churn_holdings_features(holdings: FeatureView) -> list[str]:
    """The holdings the churn model reads: the aggregates above and which products are held now.

    Which products are held matters on its own: a customer whose only products are a loan and a
    card that both close within months leaves the bank without ever churning on purpose, and the
    count `n_products` cannot tell that customer from one holding a current account and a savings
    account (docs/experiments.md: 0.972 -> 0.974 x the oracle's ROC AUC at seed 42, mean of four
    seeds 0.973 -> 0.978; 0.968 -> 0.976 on a second bank).
    """
    held = [f.name for f in holdings.features if _HELD_NOW.match(f.name)]
    return list(CHURN_HOLDINGS_FEATURES) + held


def model_features(views: dict[str, FeatureView]) -> dict[str, list[FeatureView]]:
    """The views (and projections) each model's service reads, by service name."""
    def churn_features(holdings: list[str]) -> list[FeatureView]:
        return [views[PROFILE_VIEW], views[HOLDINGS_VIEW][holdings], views[ACTIVITY_VIEW], views[SEGMENTS_VIEW]]

    nbp = [views[PROFILE_VIEW], views[HOLDINGS_VIEW], views[ACTIVITY_VIEW], views[SEGMENTS_VIEW]]
    return {NBP_FEATURE_SERVICE: nbp,
            CHURN_FEATURE_SERVICE: churn_features(churn_holdings_features(views[HOLDINGS_VIEW])),
            # Kept so that models trained on it can still have their training sets rebuilt.
            CHURN_FEATURE_SERVICE_V1: churn_features(list(CHURN_HOLDINGS_FEATURES))}


def feature_services(views: dict[str, FeatureView], context: OnDemandFeatureView) -> list[FeatureService]:
    features = model_features(views)
    nbp = FeatureService(name=NBP_FEATURE_SERVICE, features=features[NBP_FEATURE_SERVICE],
                         description="Next-best-product model inputs (and the consent flags serving enforces).")
    churn = FeatureService(name=CHURN_FEATURE_SERVICE, features=features[CHURN_FEATURE_SERVICE],
                           description="Churn model inputs: profile, activity, segments, holdings aggregates and the "
                                       "products held.")
    churn_v1 = FeatureService(name=CHURN_FEATURE_SERVICE_V1, features=features[CHURN_FEATURE_SERVICE_V1],
                              description="Churn model inputs before churn_v2: holdings aggregates only, not the "
                                          "products held.")
    offer_context = FeatureService(
        name=OFFER_CONTEXT_FEATURE_SERVICE,
        features=[views[SEGMENTS_VIEW], context],
        description="Request-time context (channel, hour, weekday) with the customer's segments, for offer "
                    "arbitration and the bandit.")
    return [nbp, churn, churn_v1, offer_context]


def _kind(field) -> str:
    return "categorical" if field.dtype == String else "numeric"


def bank_services(views: dict[str, FeatureView], versions) -> tuple[list[FeatureService], dict[str, str]]:
    """One service per recorded version (`feature_repo.versions.ServiceVersion`): its model's base
    service's features and the bank tables' columns it names. A version whose table, column, kind or TTL
    is no longer there is left out, with the reason (version -> reason)."""
    features = model_features(views)
    out, unavailable = [], {}
    for version in versions:
        base = version.to_json()["base"]
        why = []
        for table, spec in version.spec.items():
            if table not in views:
                why.append(f"table {table!r} is gone")
                continue
            fields = {f.name: _kind(f) for f in views[table].features}
            why += [f"{table}.{c} is gone" if c not in fields else f"{table}.{c} is now {fields[c]}"
                    for c, kind in spec["columns"].items() if fields.get(c) != kind]
            ttl = views[table].ttl
            days = int(ttl.total_seconds() // 86400) if ttl else None
            if days != spec["ttl_days"]:
                why.append(f"{table}'s TTL is now {days if days is not None else 'none'} days")
        if why:
            unavailable[version.name] = "; ".join(why)
            continue
        bank = [views[table][columns] for table, columns in version.tables.items()]
        out.append(FeatureService(
            name=version.name, features=[*features[base], *bank],
            description=f"The inputs of {base} and the bank's own tables {', '.join(version.tables)}."))
    return out, unavailable


def add_bank_views(paths: Paths, store, entity, offline_kind: str, views: dict) -> ServiceRecord:
    """Adds to `views` the bank's own tables (`configs/features.yaml`) and those earlier service
    versions name; returns the service record with a new version for each model whose tables changed.

    Raises:
        FileNotFoundError, ValueError: a declared table's file is missing, or lacks a declared column or its
            kind (the file predates the config: `nextbest features import` writes it again).
    """
    from nextbest.config import load_features_config
    from nextbest.settings import config_file

    cfg = load_features_config()
    record = read_record(paths).with_tables(
        {model: {t.name: table_spec(t) for t in cfg.for_model(model)} for model in BASE_SERVICES})
    declared = {t.name: table_spec(t) for t in cfg.tables}
    latest = {table: spec for v in record.versions for table, spec in v.spec.items()}  # the newest spec of each
    for name in dict.fromkeys([*declared, *latest]):
        path = paths.features / f"{name}.parquet"
        if not path.exists():
            if name in declared:
                raise FileNotFoundError(f"{path}: not found; `nextbest features import` (or `features build`) "
                                        f"imports the table {name!r} of {config_file('features.yaml')}")
            continue  # an earlier table, gone: the versions reading it are left out
        spec = declared.get(name) or latest[name]
        sample = pa.Table.from_batches([next(pq.ParquetFile(path).iter_batches(batch_size=1000))]).to_pandas()
        view = feature_view(name, sample, entity, paths.features, offline_kind,
                            timedelta(days=spec["ttl_days"]) if spec["ttl_days"] else None)
        if name in declared:
            held = {f.name: _kind(f) for f in view.features}
            stale = [c for c, kind in spec["columns"].items() if held.get(c) != kind]
            if stale:
                raise ValueError(f"{path}: column(s) {stale} are not there as {config_file('features.yaml')} "
                                 f"declares them; run `nextbest features import` first")
        views[name] = view
    return record


def bank_view_names(store, features_dir) -> list[str]:
    """The registry's views of the bank's own tables whose files are in `features_dir` (a table since
    removed keeps its view in the registry, with nothing to load)."""
    return sorted(v.name for v in store.list_feature_views() if v.name not in (*VIEWS, REALTIME_VIEW)
                  and (features_dir / f"{v.name}.parquet").exists())

