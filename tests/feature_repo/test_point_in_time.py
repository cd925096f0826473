"""Feast on a small simulated bank: point-in-time training sets, online = offline, request context."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nextbest.constants import (CHURN_FEATURE_SERVICE, CHURN_FEATURE_SERVICE_V1, NBP_FEATURE_SERVICE,
                                OFFER_CONTEXT_FEATURE_SERVICE)
from nextbest.feature_repo import store as feast_store
from nextbest.features.build import HOLDINGS_VIEW, PROFILE_VIEW


@pytest.fixture(scope="module")
def feast_workdir(feast_bank):
    return feast_bank


@pytest.fixture(scope="module")
def store(feast_workdir):
    return feast_store.open_store(feast_workdir)


def test_training_set_never_sees_a_later_value(feast_workdir, store):
    hold = pd.read_parquet(feast_workdir.features / f"{HOLDINGS_VIEW}.parquet")
    months = sorted(hold.event_timestamp.unique())
    t, t_next = months[2], months[3]
    wide = hold.pivot_table(index="customer_id", columns="event_timestamp", values="n_products")
    changed = wide[(wide[t] != wide[t_next]) & wide[t].notna() & wide[t_next].notna()]
    assert len(changed), "the simulated bank should have customers whose product count changes"
    customer = changed.index[0]
    # Asked ten days after t (before the t+1 snapshot existed), the answer must be t's value.
    entity = pd.DataFrame({"customer_id": [customer], "event_timestamp": [t + pd.Timedelta(days=10)]})
    got = store.get_historical_features(entity_df=entity, features=["customer_holdings:n_products"]).to_df()
    assert got.n_products.iloc[0] == wide.loc[customer, t]
    assert got.n_products.iloc[0] != wide.loc[customer, t_next]
    # At exactly t+1 the new value is visible.
    entity["event_timestamp"] = [t_next]
    got = store.get_historical_features(entity_df=entity, features=["customer_holdings:n_products"]).to_df()
    assert got.n_products.iloc[0] == wide.loc[customer, t_next]


def test_value_older_than_the_ttl_is_not_used(feast_workdir, store):
    prof = pd.read_parquet(feast_workdir.features / f"{PROFILE_VIEW}.parquet")
    customer = prof.customer_id.iloc[0]
    too_late = prof.event_timestamp.max() + pd.Timedelta(days=45)
    entity = pd.DataFrame({"customer_id": [customer], "event_timestamp": [too_late]})
    got = store.get_historical_features(entity_df=entity, features=["customer_profile:age"]).to_df()
    # Feast's file offline store drops an entity row that has no value within the TTL.
    assert got.empty or got.age.isna().all()
    entity["event_timestamp"] = [prof.event_timestamp.max() + pd.Timedelta(days=20)]
    got = store.get_historical_features(entity_df=entity, features=["customer_profile:age"]).to_df()
    assert got.age.notna().all() and len(got) == 1


def test_online_values_equal_offline_values_at_the_latest_snapshot(feast_workdir, store):
    prof = pd.read_parquet(feast_workdir.features / f"{PROFILE_VIEW}.parquet")
    latest = prof.event_timestamp.max()
    customers = prof[prof.event_timestamp == latest].customer_id.iloc[:15].tolist()
    service = store.get_feature_service(NBP_FEATURE_SERVICE)
    online = pd.DataFrame(store.get_online_features(features=service,
                                                    entity_rows=[{"customer_id": c} for c in customers]).to_dict())
    entity = pd.DataFrame({"customer_id": customers, "event_timestamp": [latest] * len(customers)})
    offline = store.get_historical_features(entity_df=entity, features=service).to_df()
    online, offline = online.set_index("customer_id").sort_index(), offline.set_index("customer_id").sort_index()
    columns = [c for c in online.columns if c != "event_timestamp"]
    assert len(columns) > 200
    for col in columns:
        a, b = online[col].to_numpy(), offline[col].to_numpy()
        if a.dtype.kind in "fiu" or b.dtype.kind in "fiu":
            np.testing.assert_allclose(a.astype(float), b.astype(float), rtol=1e-6, err_msg=col)
        else:
            assert list(a) == list(b), col


def test_request_context_is_the_same_function_online_and_offline(feast_workdir, store):
    prof = pd.read_parquet(feast_workdir.features / f"{PROFILE_VIEW}.parquet")
    latest = prof.event_timestamp.max()
    customer = prof[prof.event_timestamp == latest].customer_id.iloc[0]
    service = store.get_feature_service(OFFER_CONTEXT_FEATURE_SERVICE)
    online = store.get_online_features(features=service, entity_rows=[
        {"customer_id": customer, "channel": "email", "hour": 20, "weekday": 6}]).to_dict()
    entity = pd.DataFrame({"customer_id": [customer], "event_timestamp": [latest], "channel": ["email"],
                           "hour": [20], "weekday": [6]})
    offline = store.get_historical_features(entity_df=entity, features=service).to_df().iloc[0]
    assert (online["channel_digital"][0], online["is_weekend"][0], online["is_evening"][0]) == (1, 1, 1)
    assert online["hour_sin"][0] == pytest.approx(np.sin(2 * np.pi * 20 / 24))
    for col in ("channel_digital", "is_weekend", "is_evening", "hour_sin", "hour_cos", "lifecycle", "relationship"):
        assert (online[col][0] == pytest.approx(offline[col]) if col.startswith("hour")
                else online[col][0] == offline[col])


def _names(service) -> set[str]:
    return {f.name for projection in service.feature_view_projections for f in projection.features}


def test_the_churn_service_reads_the_products_held_now_and_serving_has_them(feast_workdir, store):
    """churn_v2 = churn_v1 + held_<product> for every product (no lags); both stay applied, and every
    churn input is among the features serving reads online (the nbp service)."""
    products = [c[len("held_"):] for c in pd.read_parquet(feast_workdir.features / f"{HOLDINGS_VIEW}.parquet").columns
                if c.startswith("held_") and not c.startswith("held_lag")]
    assert len(products) >= 10
    v2 = _names(store.get_feature_service(CHURN_FEATURE_SERVICE))
    v1 = _names(store.get_feature_service(CHURN_FEATURE_SERVICE_V1))
    assert v2 - v1 == {f"held_{p}" for p in products}
    assert v1 < v2 and "n_products" in v1 and not any(n.startswith("held_lag") for n in v2)
    assert v2 <= _names(store.get_feature_service(NBP_FEATURE_SERVICE))
