"""One versioned FeatureService per model, used by name in training and in serving; versions with the
bank's own feature tables (`feature_repo.versions`)."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureService, FeatureView, OnDemandFeatureView

from nextbest.constants import (CHURN_FEATURE_SERVICE, CHURN_FEATURE_SERVICE_V1, NBP_FEATURE_SERVICE,
                                OFFER_CONTEXT_FEATURE_SERVICE, REALTIME_VIEW)
from nextbest.feature_repo.features import SNAPSHOT_TTL, feature_view
from nextbest.feature_repo.versions import BASE_SERVICES, ServiceRecord, read_record
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


def bank_services(views: dict[str, FeatureView], versions) -> list[FeatureService]:
    """One service per recorded version (`feature_repo.versions.ServiceVersion`): its model's base
    service's features and the bank tables' columns it names."""
    features = model_features(views)
    out = []
    for version in versions:
        base = version.to_json()["base"]
        gone = [c for t, cols in version.tables.items() if t in views
                for c in cols if c not in {f.name for f in views[t].features}]
        if gone or any(t not in views for t in version.tables):
            log.warning("feature service %s is not applied: its table(s) no longer hold %s", version.name,
                        gone or [t for t in version.tables if t not in views])
            continue
        bank = [views[table][columns] for table, columns in version.tables.items()]
        out.append(FeatureService(
            name=version.name, features=[*features[base], *bank],
            description=f"The inputs of {base} and the bank's own tables {', '.join(version.tables)}."))
    return out


def add_bank_views(paths: Paths, store, entity, offline_kind: str, views: dict) -> ServiceRecord:
    """Adds to `views` the bank's own tables (`configs/features.yaml`) and those earlier service
    versions name; returns the service record with a new version for each model whose tables changed."""
    from nextbest.config import load_features_config
    from nextbest.settings import config_file

    cfg = load_features_config()
    record = read_record(paths).with_tables(
        {model: {t.name: list(t.columns) for t in cfg.for_model(model)} for model in BASE_SERVICES})
    declared = {t.name: t for t in cfg.tables}
    for name in dict.fromkeys([*declared, *(t for v in record.versions for t in v.tables)]):
        path = paths.features / f"{name}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path}: not found; the table {name!r} of {config_file('features.yaml')} is "
                                    "imported by `nextbest features import` (or `features build`)"
                                    if name in declared else
                                    f"{path}: not found, and an applied feature service version reads it; restore "
                                    "it, or import it again by naming it in configs/features.yaml")
        if name in declared:
            t = declared[name]
            ttl = timedelta(days=t.ttl_days) if t.ttl_days else (None if t.as_of else SNAPSHOT_TTL)
        else:  # an earlier table: its view keeps the TTL it was applied with
            ttl = store.get_feature_view(name).ttl or None
        sample = pa.Table.from_batches([next(pq.ParquetFile(path).iter_batches(batch_size=1000))]).to_pandas()
        views[name] = feature_view(name, sample, entity, paths.features, offline_kind, ttl)
    return record


def bank_view_names(store) -> list[str]:
    """The registry's views of the bank's own tables."""
    return sorted(v.name for v in store.list_feature_views() if v.name not in (*VIEWS, REALTIME_VIEW))

