"""Training sets joined by customer part equal Feast's own point-in-time join, row for row."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from nextbest.constants import (CHURN_FEATURE_SERVICE, CUSTOMER_ID, EVENT_TIMESTAMP, FEATURE_PARTS_KEY,
                                NBP_FEATURE_SERVICE, OFFER_CONTEXT_FEATURE_SERVICE)
from nextbest.feature_repo import retrieval
from nextbest.feature_repo import store as feast_store
from nextbest.features.build import HOLDINGS_VIEW, VIEWS
from nextbest.features.partitioned import BuildOptions
from nextbest.features.pipeline import build_features_to
from nextbest.io import read_raw
from nextbest.settings import Paths
from nextbest.training.datasets import nbp_labels

PARTS = 5


@pytest.fixture(scope="module")
def parted(feast_bank, tmp_path_factory, catalogue):
    """The Feast bank's raw tables built in 5 parts, applied to Feast."""
    paths = Paths.from_workdir(tmp_path_factory.mktemp("parted")).ensure()
    shutil.copytree(feast_bank.raw, paths.raw, dirs_exist_ok=True)
    build_features_to(paths, catalogue, options=BuildOptions(parts=PARTS))
    feast_store.apply(paths)
    return paths


@pytest.fixture(scope="module")
def store(parted):
    return feast_store.open_store(parted)


@pytest.fixture(scope="module")
def entity(parted, catalogue):
    """The nbp labels, plus rows Feast must answer with nulls or older values: a customer the bank does
    not know, a time before any snapshot, times between snapshots, and exactly at the TTL's edge."""
    raw = read_raw(parted.raw, catalogue.ids, tables=("customers", "holdings", "interactions"))
    labels = nbp_labels(raw["customers"], raw["holdings"], raw["interactions"], catalogue.ids)
    snapshots = sorted(pd.read_parquet(parted.features / f"{HOLDINGS_VIEW}.parquet")[EVENT_TIMESTAMP].unique())
    first = _utc(snapshots[0])
    odd = labels.head(6).copy()
    odd[CUSTOMER_ID] = ["NOBODY", *odd[CUSTOMER_ID].iloc[1:]]
    odd[EVENT_TIMESTAMP] = [first, first - pd.Timedelta(days=1), first + pd.Timedelta(days=10),
                            first + pd.Timedelta(days=31), first + pd.Timedelta(days=31, seconds=1),
                            first + pd.Timedelta(days=45)]
    return pd.concat([labels, odd], ignore_index=True)


def _utc(t) -> pd.Timestamp:
    t = pd.Timestamp(t)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    """By time, customer and then the labels: an entity row may repeat a (customer, time), as here."""
    labels = [c for c in df.columns if c.startswith("label_")]
    return df.sort_values([EVENT_TIMESTAMP, CUSTOMER_ID, *labels], kind="stable").reset_index(drop=True)


def test_every_feature_file_records_its_parts(parted):
    for view in VIEWS:
        rows = retrieval.part_rows(parted.features / f"{view}.parquet")
        assert rows is not None and len(rows) == PARTS
        assert sum(rows) == pq.ParquetFile(parted.features / f"{view}.parquet").metadata.num_rows
        assert min(rows) > 0


@pytest.mark.parametrize("service", [NBP_FEATURE_SERVICE, CHURN_FEATURE_SERVICE])
def test_the_join_by_parts_equals_feasts_row_for_row(store, entity, service):
    feast = store.get_historical_features(entity_df=entity, features=store.get_feature_service(service)).to_df()
    # A few thousand feature rows per group: several groups of parts.
    ours = retrieval.historical_features(store, entity, service, group_rows=3000)
    assert list(ours.columns) == list(feast.columns)
    pd.testing.assert_frame_equal(_sorted(ours), _sorted(feast), check_like=False)
    odd = _sorted(ours).set_index([CUSTOMER_ID, EVENT_TIMESTAMP])
    assert odd.loc["NOBODY"].iloc[:, -1].isna().all()  # a customer the bank does not know: no features


def test_the_ttl_edge_is_feasts(parted, store, entity):
    """At exactly 31 days after the last snapshot it still answers; one second later it does not."""
    holdings = pd.read_parquet(parted.features / f"{HOLDINGS_VIEW}.parquet", columns=[CUSTOMER_ID, EVENT_TIMESTAMP])
    last = holdings[EVENT_TIMESTAMP].max()
    customer = holdings.loc[holdings[EVENT_TIMESTAMP] == last, CUSTOMER_ID].iloc[0]
    edge = _utc(last) + pd.Timedelta(days=31)
    rows = pd.DataFrame({CUSTOMER_ID: [customer, customer], EVENT_TIMESTAMP: [edge, edge + pd.Timedelta(seconds=1)]})
    feast = store.get_historical_features(entity_df=rows, features=["customer_holdings:n_products"]).to_df()
    assert feast.sort_values(EVENT_TIMESTAMP)["n_products"].notna().tolist() == [True, False]
    ours = retrieval.historical_features(store, rows, NBP_FEATURE_SERVICE)
    assert ours.sort_values(EVENT_TIMESTAMP)["n_products"].notna().tolist() == [True, False]


def test_a_service_with_request_context_goes_through_feast(store, entity):
    assert retrieval.service_sources(store, OFFER_CONTEXT_FEATURE_SERVICE) is None


def test_files_without_parts_go_through_feast(parted, store, entity, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(retrieval, "part_rows", lambda path: calls.append(path))
    small = entity.head(50)
    got = retrieval.historical_features(store, small, NBP_FEATURE_SERVICE)
    feast = store.get_historical_features(entity_df=small, features=store.get_feature_service(
        NBP_FEATURE_SERVICE)).to_df()
    assert calls, "the files' parts were asked for"
    pd.testing.assert_frame_equal(_sorted(got), _sorted(feast))


def test_groups_hold_about_the_rows_asked_for():
    per_part = np.array([400, 400, 400, 900, 100, 100])
    assert retrieval._groups(per_part, 1000) == [(0, 2), (2, 3), (3, 5), (5, 6)]
    assert retrieval._groups(per_part, 10) == [(i, i + 1) for i in range(6)]
    assert retrieval._groups(per_part, 10**9) == [(0, 6)]


def test_a_part_count_that_disagrees_with_the_file_is_ignored(parted, tmp_path):
    path = parted.features / f"{HOLDINGS_VIEW}.parquet"
    table = pq.read_table(path)
    bad = tmp_path / "bad.parquet"
    meta = dict(table.schema.metadata or {})
    meta[FEATURE_PARTS_KEY.encode()] = b"[1, 2]"
    pq.write_table(table.replace_schema_metadata(meta), bad)
    assert retrieval.part_rows(bad) is None
