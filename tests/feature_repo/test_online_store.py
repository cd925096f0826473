"""The row-per-entity SQLite online store: same answers as Feast's own store, bulk writes,
overwrites, latest-snapshot selection and transactions."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.offline_stores.dask import DaskOfflineStoreConfig
from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig, load_repo_config
from feast.types import Array, Bool, Float32, Float64, Int32, Int64, String

from nextbest.constants import NBP_FEATURE_SERVICE
from nextbest.feature_repo import online_store as row_store
from nextbest.feature_repo import rows as row_codec
from nextbest.feature_repo import store as feast_store
from nextbest.feature_repo.online_store import RowSqliteOnlineStore, RowSqliteOnlineStoreConfig
from nextbest.features.build import PROFILE_VIEW, VIEWS
from nextbest.features.pipeline import build_features_to
from nextbest.settings import Paths
from nextbest.simulation.bank import BankSpec
from nextbest.simulation.write import generate_to
from tests.conftest import END

T1 = pd.Timestamp("2026-05-31", tz="UTC")
T2 = pd.Timestamp("2026-06-30", tz="UTC")
CUSTOMERS = [f"c{i}" for i in range(6)]
FEATURES = ["f32", "f64", "i64", "i64_null", "i32", "flag", "s", "tags"]


def _frame() -> pd.DataFrame:
    """c0..c4 at T1 and T2, c5 only at T1; T2 rows carry every awkward value."""
    t2 = pd.DataFrame({
        "customer_id": CUSTOMERS[:5],
        "event_timestamp": [T2] * 5,
        "f32": np.array([0.1, np.nan, -3.5, 1e30, 0.0], dtype=np.float32),
        "f64": [1 / 3, np.nan, -0.0, 1e300, 2.5],
        "i64": np.array([2**62, -5, 0, 127, -(2**40)], dtype=np.int64),
        "i64_null": pd.array([1, None, -128, 300, None], dtype="Int64"),
        "i32": np.array([70000, -1, 0, 5, 2**31 - 1], dtype=np.int32),
        "flag": pd.array([True, None, False, True, False], dtype="boolean"),
        "s": ["ünïcødé", "", None, "a\x00b", "plain"],
        "tags": [[1, 2], [], None, [2**40], [-1]],
    })
    t1 = t2.copy()
    t1["event_timestamp"] = T1
    t1["customer_id"] = CUSTOMERS[:4] + ["c5"]
    t1["f32"] = np.float32(7.0)
    t1["i64"] = 11
    t1["s"] = "old"
    # Out of time order on purpose: the latest row must win, not the last one.
    return pd.concat([t2, t1], ignore_index=True)


def _definitions(parquet):
    customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)
    source = FileSource(name="things_source", path=str(parquet), timestamp_field="event_timestamp")
    view = FeatureView(name="things", entities=[customer], ttl=timedelta(days=90), source=source, online=True,
                       schema=[Field(name="f32", dtype=Float32), Field(name="f64", dtype=Float64),
                               Field(name="i64", dtype=Int64), Field(name="i64_null", dtype=Int64),
                               Field(name="i32", dtype=Int32), Field(name="flag", dtype=Bool),
                               Field(name="s", dtype=String), Field(name="tags", dtype=Array(Int64))])
    return [customer, view, FeatureService(name="things_v1", features=[view])]


def _store(base, online) -> FeatureStore:
    base.mkdir(parents=True, exist_ok=True)
    parquet = base.parent / "things.parquet"
    if not parquet.exists():
        pq.write_table(pa.Table.from_pandas(_frame(), preserve_index=False), parquet)
    config = RepoConfig(project="t", provider="local", registry=str(base / "registry.db"), online_store=online,
                        offline_store=DaskOfflineStoreConfig(), entity_key_serialization_version=3, repo_path=base)
    store = FeatureStore(config=config)
    store.apply(_definitions(parquet))
    return store


def _row_store(base) -> FeatureStore:
    return _store(base, RowSqliteOnlineStoreConfig(path=str(base / "online.db")))


def _feast_materialize(store: FeatureStore) -> None:
    store.materialize(start_date=(T1 - timedelta(days=1)).to_pydatetime(),
                      end_date=(T2 + timedelta(seconds=1)).to_pydatetime())


def _latest(base) -> pa.Table:
    return feast_store.latest_rows(base.parent / "things.parquet", ["customer_id", "event_timestamp", *FEATURES],
                                   ["customer_id"], "event_timestamp", T1 - timedelta(days=1), T2)


def _write_frame(store: FeatureStore, frame) -> int:
    online = RowSqliteOnlineStore()
    try:
        return online.write_frame(store.config, store.get_feature_view("things"), frame)
    finally:
        online.close_connection()


def _online(store: FeatureStore, customers=(*CUSTOMERS, "nobody")):
    return store.get_online_features(features=store.get_feature_service("things_v1"),
                                     entity_rows=[{"customer_id": c} for c in customers])


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The same data in Feast's SQLite store, ours through Feast's writer, ours through write_frame."""
    root = tmp_path_factory.mktemp("online_store")
    stock = _store(root / "stock", SqliteOnlineStoreConfig(path=str(root / "stock" / "online.db")))
    _feast_materialize(stock)
    generic = _row_store(root / "generic")
    _feast_materialize(generic)
    fast = _row_store(root / "fast")
    assert _write_frame(fast, _latest(root / "fast")) == len(CUSTOMERS)
    return {"stock": stock, "generic": generic, "fast": fast, "root": root}


def test_the_fast_path_and_feast_writer_serve_what_feast_sqlite_serves(stores):
    expected = _online(stores["stock"])
    for name in ("generic", "fast"):
        got = _online(stores[name])
        assert got.proto.metadata == expected.proto.metadata, name
        for i, (a, b) in enumerate(zip(got.proto.results, expected.proto.results)):
            feature = expected.proto.metadata.feature_names.val[i]
            assert list(a.values) == list(b.values), (name, feature)
            assert list(a.statuses) == list(b.statuses), (name, feature)
        # Event timestamps: whole seconds here, so Feast's store (epoch seconds) agrees.
        assert got.to_dict(include_event_timestamps=True) == expected.to_dict(include_event_timestamps=True), name


def test_values_and_types_round_trip(stores):
    got = _online(stores["fast"]).to_dict()
    row = dict(zip(got["customer_id"], zip(*(got[f] for f in FEATURES))))
    assert row["c0"] == (pytest.approx(0.1, rel=1e-7), 1 / 3, 2**62, 1, 70000, True, "ünïcødé", [1, 2])
    assert row["c3"][2:] == (127, 300, 5, True, "a\x00b", [2**40])
    assert row["c4"][2:5] == (-(2**40), None, 2**31 - 1)
    assert row["c5"][0] == 7.0 and row["c5"][6] == "old"  # only an older row: it is the latest
    proto = _online(stores["fast"], ["c0"]).proto
    values = {proto.metadata.feature_names.val[i]: r.values[0] for i, r in enumerate(proto.results)}
    assert {name: v.WhichOneof("val") for name, v in values.items()} == {
        "customer_id": "string_val", "f32": "float_val", "f64": "double_val", "i64": "int64_val",
        "i64_null": "int64_val", "i32": "int32_val", "flag": "bool_val", "s": "string_val", "tags": "int64_list_val"}
    assert values["f32"].float_val == np.float32(0.1)


def test_missing_values_are_null_and_unknown_customers_are_none(stores):
    got = _online(stores["fast"]).to_dict()
    c1 = got["customer_id"].index("c1")
    assert (got["f32"][c1], got["f64"][c1], got["i64_null"][c1], got["flag"][c1]) == (None, None, None, None)
    assert got["s"][c1] == "" and got["s"][got["customer_id"].index("c2")] is None
    nobody = got["customer_id"].index("nobody")
    assert all(got[f][nobody] is None for f in FEATURES)


def test_entity_keys_are_feast_serialised_keys():
    table = pa.table({"customer_id": ["C0000001", "ü", ""], "n": [1, -(2**40), 0]})
    for column, value_type, field in (("customer_id", ValueType.STRING, "string_val"),
                                      ("n", ValueType.INT64, "int64_val")):
        keys = row_codec.entity_keys(table, [(column, value_type)], 3)
        assert keys == [serialize_entity_key(EntityKeyProto(join_keys=[column],
                                                            entity_values=[ValueProto(**{field: v})]), 3)
                        for v in table.column(column).to_pylist()]


def test_a_newer_snapshot_overwrites_and_a_failed_write_changes_nothing(tmp_path, monkeypatch):
    store = _row_store(tmp_path / "rw")
    latest = _latest(tmp_path / "rw")
    _write_frame(store, latest)
    newer = latest.to_pandas()
    newer["event_timestamp"] = T2 + timedelta(days=31)
    newer["i64"] = 42
    _write_frame(store, newer)
    got = _online(store).to_dict(include_event_timestamps=True)
    assert got["i64"][:6] == [42] * 6
    assert set(got["i64__ts"][:6]) == {int((T2 + timedelta(days=31)).timestamp())}

    # Three chunks of two rows; the third fails after the first two went in: all are rolled back.
    monkeypatch.setattr(row_store, "WRITE_CHUNK_ROWS", 2)
    broken = newer.copy()
    broken["i64"] = 7
    broken["event_timestamp"] = broken["event_timestamp"].astype(object)
    broken.loc[5, "event_timestamp"] = None
    with pytest.raises(ValueError, match="missing"):
        _write_frame(store, broken)
    assert _online(store).to_dict(include_event_timestamps=True) == got
    broken.loc[5, "event_timestamp"] = T2 + timedelta(days=62)
    _write_frame(store, broken)  # the store is still usable
    assert _online(store).to_dict()["i64"][:6] == [7] * 6


def test_values_of_another_type_than_the_schema_are_kept_as_given(tmp_path):
    store = _row_store(tmp_path / "odd")
    view = store.get_feature_view("things")
    key = EntityKeyProto(join_keys=["customer_id"], entity_values=[ValueProto(string_val="c0")])
    values = {"f32": ValueProto(int64_val=3), "s": ValueProto(string_val="x"), "extra": ValueProto(double_val=0.5)}
    RowSqliteOnlineStore().online_write_batch(store.config, view, [(key, values, T2.to_pydatetime(), None)], None)
    (ts, got), = RowSqliteOnlineStore().online_read(store.config, view, [key])
    assert ts == T2.to_pydatetime() and got == values
    assert _online(store, ["c0"]).to_dict()["i64"] == [None]  # not written: absent


def test_latest_rows_keeps_the_last_row_per_customer_in_the_window(tmp_path):
    frame = _frame()
    for name, rows in (("shuffled", frame.sample(frac=1, random_state=0)),
                       ("ordered", frame.sort_values(["customer_id", "event_timestamp"]))):
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), path)
        got = feast_store.latest_rows(path, ["customer_id", "event_timestamp", "i64"], ["customer_id"],
                                      "event_timestamp", T1 - timedelta(days=1), T2).to_pandas()
        got = got.sort_values("customer_id")
        assert got.customer_id.tolist() == CUSTOMERS, name
        assert got.event_timestamp.tolist() == [T2] * 5 + [T1], name
        only_t1 = feast_store.latest_rows(path, ["customer_id", "event_timestamp"], ["customer_id"],
                                          "event_timestamp", T1, T1 + timedelta(days=1)).to_pandas()
        assert sorted(only_t1.customer_id) == ["c0", "c1", "c2", "c3", "c5"], name


def test_feast_sqlite_tables_in_the_same_file_are_replaced(tmp_path):
    path = tmp_path / "shared" / "online.db"
    stock = _store(tmp_path / "shared", SqliteOnlineStoreConfig(path=str(path)))
    _feast_materialize(stock)
    expected = _online(stock).to_dict()
    ours = _store(tmp_path / "shared", RowSqliteOnlineStoreConfig(path=str(path)))
    assert _online(ours).to_dict()["i64"] == [None] * 7  # replaced, empty until materialised
    _feast_materialize(ours)
    assert _online(ours).to_dict() == expected
    ours.teardown()
    assert not path.exists()


# -- the project's store: template, materialise, overwrite, latest snapshot ------------------------

@pytest.fixture(scope="module")
def bank(tmp_path_factory, catalogue):
    paths = Paths.from_workdir(tmp_path_factory.mktemp("row_bank")).ensure()
    generate_to(paths, catalogue, BankSpec(n_customers=150, n_months=4, seed=5, end=END))
    build_features_to(paths, catalogue)
    feast_store.apply(paths)
    return paths


def _by_customer(paths, customers):
    store = feast_store.open_store(paths)
    got = store.get_online_features(features=store.get_feature_service(NBP_FEATURE_SERVICE),
                                    entity_rows=[{"customer_id": c} for c in customers]).to_dict()
    return pd.DataFrame(got).set_index("customer_id")


def test_materialize_writes_each_customers_latest_snapshot_and_overwrites_with_a_newer_one(bank):
    store = feast_store.open_store(bank)
    assert isinstance(store.config.online_store, RowSqliteOnlineStoreConfig)
    assert load_repo_config(bank.feast, bank.feast / "feature_store.yaml").online_store.path == \
        str(bank.feast / "online_store.db")
    tables = {v: pd.read_parquet(bank.features / f"{v}.parquet") for v in VIEWS}
    months = sorted(tables[PROFILE_VIEW].event_timestamp.unique())
    customers = tables[PROFILE_VIEW].customer_id.drop_duplicates().tolist()

    for end in (months[-2], months[-1]):  # an older snapshot first, then the newer one over it
        rows = feast_store.materialize(bank, end=end.to_pydatetime())
        assert rows == sum(t[t.event_timestamp <= end].customer_id.nunique() for t in tables.values())
        online = _by_customer(bank, customers)
        for view, table in tables.items():
            past = table[table.event_timestamp <= end].sort_values("event_timestamp")
            expected = past.groupby("customer_id").tail(1).set_index("customer_id")
            features = [c for c in table.columns if c not in ("customer_id", "event_timestamp")]
            got = online.loc[expected.index, features]
            for col in features:
                if expected[col].dtype.kind == "O":
                    assert got[col].tolist() == expected[col].tolist(), (view, col)
                else:  # float32 values come back exactly (as float_val)
                    np.testing.assert_array_equal(got[col].to_numpy(float), expected[col].to_numpy(float),
                                                  err_msg=f"{view}.{col}")
    for view in VIEWS:
        assert store.registry.get_feature_view(view, store.project).materialization_intervals


def test_feast_materialize_on_the_project_store_serves_the_same_values(bank, tmp_path):
    customers = pd.read_parquet(bank.features / f"{PROFILE_VIEW}.parquet").customer_id.unique().tolist()
    feast_store.materialize(bank)
    fast = _by_customer(bank, [*customers, "nobody"])
    store = feast_store.open_store(bank)
    RowSqliteOnlineStore().teardown(store.config, [], [])
    store.apply(store.list_feature_views())
    end = feast_store.latest_snapshot(bank)
    store.materialize(start_date=(end - timedelta(days=31)).to_pydatetime(),
                      end_date=(end + timedelta(seconds=1)).to_pydatetime())
    pd.testing.assert_frame_equal(_by_customer(bank, [*customers, "nobody"]), fast)


def test_the_serving_read_path_returns_what_get_online_features_returns(stores):
    store = stores["fast"]
    service = store.get_feature_service("things_v1")
    tables = [(store.get_feature_view(p.name), [f.name for f in p.features]) for p in service.feature_view_projections]
    online = RowSqliteOnlineStore()
    expected = _online(store).to_dict()
    try:
        for i, customer in enumerate(expected["customer_id"]):
            key = EntityKeyProto(join_keys=["customer_id"], entity_values=[ValueProto(string_val=customer)])
            got = online.read_python(store.config, tables, key)
            if customer == "nobody":
                assert got is None
                continue
            want = {f: expected[f][i] for f in FEATURES}
            assert got == want, customer
            assert {f: type(v) for f, v in got.items()} == {f: type(v) for f, v in want.items()}, customer
    finally:
        online.close_connection()
