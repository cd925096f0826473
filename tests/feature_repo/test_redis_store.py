"""Redis as the online store, against a real `redis-server`: the same answers as the SQLite
store, Feast's own bytes, the choice made by CLI flags or environment and kept in the work dir,
clear one-line errors, and what a Redis that stops mid-run looks like to readers."""

from __future__ import annotations

import shutil
import time
from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import redis as redis_py
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType
from typer.testing import CliRunner

from nextbest.cli import app
from nextbest.constants import CUSTOMER_ID, NBP_FEATURE_SERVICE
from nextbest.feature_repo import store as feast_store
from nextbest.feature_repo.redis_store import (DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_SOCKET_TIMEOUT_S, REDIS_PASSWORD_ENV,
                                               RedisTarget, encode_timestamps, encode_values)
from nextbest.feature_repo.store import (ONLINE_STORE_ENV, REDIS_URL_ENV, OnlineStoreChoice, current_online_store,
                                         resolve_online_store)
from nextbest.features.build import PROFILE_VIEW
from nextbest.settings import Paths
from tests.redis_server import redis_server

UNKNOWN = "no-such-customer"


def _copy(feast_bank: Paths, dst) -> Paths:
    shutil.copytree(feast_bank.root, dst)
    return Paths.from_workdir(dst)


def _redis(url: str) -> OnlineStoreChoice:
    return OnlineStoreChoice("redis", RedisTarget.from_url(url))


def _online(paths: Paths, customers: list[str]) -> pd.DataFrame:
    store = feast_store.open_store(paths)
    got = store.get_online_features(features=store.get_feature_service(NBP_FEATURE_SERVICE),
                                    entity_rows=[{CUSTOMER_ID: c} for c in customers]).to_dict()
    return pd.DataFrame(got).set_index(CUSTOMER_ID)


def _hashes(client: redis_py.Redis) -> dict[bytes, dict[bytes, bytes]]:
    return {key: client.hgetall(key) for key in client.scan_iter(count=1000)}


@pytest.fixture(scope="module")
def server():
    with redis_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def redis_bank(feast_bank, server, tmp_path_factory):
    """A copy of the shared bank, applied with Redis (database 0) and materialised."""
    paths = _copy(feast_bank, tmp_path_factory.mktemp("redis_bank") / "wd")
    feast_store.apply(paths, _redis(server.url))
    feast_store.materialize(paths)
    return paths


@pytest.fixture(scope="module")
def customers(feast_bank) -> list[str]:
    ids = pd.read_parquet(feast_bank.features / f"{PROFILE_VIEW}.parquet", columns=[CUSTOMER_ID])[CUSTOMER_ID]
    ids = ids.drop_duplicates().tolist()
    return [ids[i] for i in np.random.default_rng(3).choice(len(ids), 150, replace=False)]


# -- the store -------------------------------------------------------------------------------------

def test_redis_serves_exactly_what_sqlite_serves(feast_bank, redis_bank, customers):
    sample = [*customers, UNKNOWN]
    from_redis, from_sqlite = _online(redis_bank, sample), _online(feast_bank, sample)
    assert len(from_redis.columns) > 200
    pd.testing.assert_frame_equal(from_redis, from_sqlite)
    assert from_redis.loc[UNKNOWN].isna().all()
    assert from_redis.drop(index=UNKNOWN).notna().any(axis=None)


def test_bulk_writer_writes_feasts_own_bytes(redis_bank, server, tmp_path):
    """Stock Feast materialisation of the same interval, into another database of the same
    server, leaves exactly the same keys, fields and bytes as our bulk writer."""
    stock = _copy(redis_bank, tmp_path / "stock")
    feast_store.apply(stock, _redis(server.url.rsplit("/", 1)[0] + "/1"))
    store = feast_store.open_store(stock)
    end = pd.Timestamp(feast_store.latest_snapshot(stock))
    end = end.tz_localize("UTC") if end.tzinfo is None else end
    store.materialize(start_date=(end - store.get_feature_view(PROFILE_VIEW).ttl).to_pydatetime(),
                      end_date=(end + timedelta(seconds=1)).to_pydatetime())
    ours = _hashes(redis_py.Redis(port=server.port, db=0))
    feasts = _hashes(redis_py.Redis(port=server.port, db=1))
    assert len(ours) > 1000
    assert ours.keys() == feasts.keys()
    assert [k for k in ours if ours[k] != feasts[k]] == []


@pytest.mark.parametrize("arr,value_type", [
    (pa.array([0.0, -0.0, 1.5, None, float("nan"), 3.4e38, -1e-45], pa.float32()), ValueType.FLOAT),
    (pa.array([0.0, 1 / 3, None, float("nan"), -1e300], pa.float64()), ValueType.DOUBLE),
    (pa.array([0, -1, 127, 128, None, 2**53, -(2**53), 5], pa.int64()), ValueType.INT64),
    (pa.array([0, -1, 2**31 - 1, None, -(2**31)], pa.int32()), ValueType.INT32),
    (pa.array([0.0, 2.0, None, float("nan")], pa.float64()), ValueType.INT64),  # ints read back as floats
    (pa.array([True, False, None, True]), ValueType.BOOL),
    (pa.array(["", "a", None, "ünïcødé", "a\x00b", "a"]), ValueType.STRING),
    (pa.array([b"", b"\x00\xff", None], pa.binary()), ValueType.BYTES),
    (pa.array([[1, 2], [], None, [2**40]], pa.list_(pa.int64())), ValueType.INT64_LIST),
    (pa.array([None, None], pa.float32()), ValueType.FLOAT),
    (pa.array([], pa.int64()), ValueType.INT64),
])
def test_value_encoding_is_feasts(arr, value_type):
    expected = [p.SerializeToString() for p in
                python_values_to_proto_values(arr.to_numpy(zero_copy_only=False), value_type)]
    assert encode_values(arr, value_type) == expected
    assert encode_values(arr, value_type, resp=True) == [b"$%d\r\n%s\r\n" % (len(v), v) for v in expected]


def test_timestamp_encoding_is_feasts():
    from google.protobuf.timestamp_pb2 import Timestamp

    times = [pd.Timestamp("2026-06-30", tz="UTC"), pd.Timestamp("1969-12-31 23:59:59.5", tz="UTC"),
             pd.Timestamp("2026-06-30 12:00:00.000001", tz="UTC"), pd.Timestamp("2026-06-30", tz="UTC")]
    expected = []
    for t in times:
        ts = Timestamp()
        ts.FromDatetime(t.to_pydatetime())
        expected.append(ts.SerializeToString())
    assert encode_timestamps(pa.array(times, pa.timestamp("us", tz="UTC"))) == expected
    assert encode_timestamps(pa.array(times, pa.timestamp("us", tz="UTC")), resp=True) == \
        [b"$%d\r\n%s\r\n" % (len(v), v) for v in expected]
    assert encode_timestamps(pa.array([t.tz_localize(None) for t in times], pa.timestamp("ns"))) == expected


def test_each_materialisation_serves_the_snapshot_it_was_asked_for(feast_bank, server, customers, tmp_path):
    """Unlike Feast's writer (which keeps the newer row), ours writes the requested snapshot,
    like the SQLite store: materialising an older month after a newer one serves the older."""
    paths = _copy(feast_bank, tmp_path / "wd")
    feast_store.apply(paths, _redis(server.url.rsplit("/", 1)[0] + "/4"))
    profile = pd.read_parquet(paths.features / f"{PROFILE_VIEW}.parquet", columns=[CUSTOMER_ID, "event_timestamp",
                                                                                    "tenure_months"])
    months = sorted(profile.event_timestamp.unique())
    for end in (months[-1], months[-3]):
        feast_store.materialize(paths, end=end.to_pydatetime())
        at_end = profile[profile.event_timestamp == end].set_index(CUSTOMER_ID).tenure_months
        sample = [c for c in customers if c in at_end.index][:40]
        got = _online(paths, sample).tenure_months
        np.testing.assert_array_equal(got.to_numpy(float), at_end.loc[sample].to_numpy(float))


def test_a_stopped_redis_fails_reads_fast_and_a_restarted_one_is_used_again(feast_bank, customers, tmp_path):
    """What the service's degraded path sees: with Redis killed, a read raises a connection
    error within the connect timeout (no retries with backoff); once Redis is back (empty:
    nothing persisted) and materialised, the same FeatureStore object serves again."""
    with redis_server() as srv:
        paths = _copy(feast_bank, tmp_path / "wd")
        feast_store.apply(paths, _redis(srv.url))
        feast_store.materialize(paths)
        store = feast_store.open_store(paths)
        service = store.get_feature_service(NBP_FEATURE_SERVICE)
        rows = [{CUSTOMER_ID: c} for c in customers[:5]]
        before = store.get_online_features(features=service, entity_rows=rows).to_dict()

        srv.stop()
        started = time.perf_counter()
        with pytest.raises(redis_py.ConnectionError):
            store.get_online_features(features=service, entity_rows=rows)
        assert time.perf_counter() - started < DEFAULT_CONNECT_TIMEOUT_S
        with pytest.raises(feast_store.OnlineStoreUnavailable, match=rf"redis://127\.0\.0\.1:{srv.port}/0"):
            feast_store.materialize(paths)

        srv.start()
        empty = store.get_online_features(features=service, entity_rows=rows).to_dict()
        assert all(v is None for k, vs in empty.items() if k != CUSTOMER_ID for v in vs)
        feast_store.materialize(paths)
        assert store.get_online_features(features=service, entity_rows=rows).to_dict() == before


def test_the_password_stays_in_the_environment(feast_bank, tmp_path, monkeypatch):
    with redis_server(args=("--requirepass", "s3cret-pw")) as srv:
        paths = _copy(feast_bank, tmp_path / "wd")
        monkeypatch.setenv(REDIS_PASSWORD_ENV, "s3cret-pw")
        feast_store.apply(paths, resolve_online_store("redis", srv.url, {REDIS_PASSWORD_ENV: "s3cret-pw"}))
        config = (paths.feast / "feature_store.yaml").read_text()
        assert "s3cret-pw" not in config and f"password=${{{REDIS_PASSWORD_ENV}}}" in config
        assert feast_store.materialize(paths) > 1000
        monkeypatch.delenv(REDIS_PASSWORD_ENV)
        with pytest.raises(feast_store.OnlineStoreUnavailable, match=f"refused the login.*{REDIS_PASSWORD_ENV}"):
            feast_store.materialize(paths)


def test_key_ttl_is_set_as_feasts_writer_sets_it(redis_bank, server):
    from nextbest.feature_repo.redis_store import write_batches

    store = feast_store.open_store(redis_bank)
    config = store.config.model_copy(deep=True)
    config.online_store.key_ttl_seconds = 3600
    fv = store.get_feature_view(PROFILE_VIEW)
    rows = feast_store.latest_rows(redis_bank.features / f"{PROFILE_VIEW}.parquet",
                                   [CUSTOMER_ID, "event_timestamp", *(f.name for f in fv.features)], [CUSTOMER_ID],
                                   "event_timestamp", pd.Timestamp(0, tz="UTC"), pd.Timestamp.now(tz="UTC"))
    client = redis_py.Redis(port=server.port, db=6)
    assert write_batches(client, config, fv, [rows.slice(0, 50)], rows_per_pipeline=16) == 50
    db0 = redis_py.Redis(port=server.port, db=0)
    for key in client.scan_iter():
        assert 0 < client.ttl(key) <= 3600
        assert client.hgetall(key).items() <= db0.hgetall(key).items()
    client.flushdb()


def test_a_refused_write_is_one_clear_error_and_the_connection_is_not_reused(feast_bank, tmp_path):
    with redis_server(args=("--maxmemory", "2mb", "--maxmemory-policy", "noeviction")) as srv:
        paths = _copy(feast_bank, tmp_path / "wd")
        feast_store.apply(paths, _redis(srv.url))
        with pytest.raises(feast_store.OnlineStoreUnavailable, match="refused a write: .*maxmemory"):
            feast_store.materialize(paths)
        client = redis_py.Redis(port=srv.port)
        assert client.ping() and client.flushdb()


def test_the_helper_fails_rather_than_skips_without_redis_server(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="install it .* or run .ci/run"):
        with redis_server():
            pass


# -- choosing the store ----------------------------------------------------------------------------

@pytest.mark.parametrize("url,expected", [
    ("redis://127.0.0.1:6379/0", RedisTarget("127.0.0.1", 6379, 0)),
    ("redis://cache.bank.internal/3", RedisTarget("cache.bank.internal", 6379, 3)),
    ("rediss://cache:6380", RedisTarget("cache", 6380, 0, ssl=True)),
    ("redis://h:1/2?socket_timeout=0.25&socket_connect_timeout=0.1",
     RedisTarget("h", 1, 2, socket_timeout=0.25, socket_connect_timeout=0.1)),
])
def test_redis_urls_parse_and_round_trip_through_feasts_connection_string(url, expected):
    target = RedisTarget.from_url(url)
    assert target == expected
    assert RedisTarget.from_connection_string(target.connection_string) == target
    assert target.connection_string.startswith(f"{expected.host}:{expected.port},db={expected.db}")
    assert "retry=null" in target.connection_string


@pytest.mark.parametrize("url,why", [
    ("localhost:6379", "scheme"),
    ("http://localhost:6379/0", "scheme"),
    ("redis://", "no host"),
    ("redis://localhost:notaport/0", "port"),
    ("redis://localhost:70000/0", "port"),
    ("redis://localhost:6379/zero", "database"),
    ("redis://:secret@localhost:6379/0", REDIS_PASSWORD_ENV),
    ("redis://localhost:6379/0?timeout=1", "unknown option"),
    ("redis://localhost:6379/0?socket_timeout=-1", "positive"),
    ("redis://[::1]:6379/0", "IPv6"),
    ("redis://[::1:6379/0", "IPv6"),
])
def test_malformed_redis_urls_are_refused_naming_the_url(url, why):
    with pytest.raises(ValueError, match=why) as err:
        RedisTarget.from_url(url)
    assert repr(url.replace("secret", "***")) in str(err.value)
    assert "secret" not in str(err.value)


def test_choice_comes_from_flag_then_environment_then_the_work_dir_then_the_default():
    url_a, url_b = "redis://a:1/0", "redis://b:2/5"
    redis_a = _redis(url_a)
    assert resolve_online_store(None, None, {}) == OnlineStoreChoice()
    assert resolve_online_store(None, None, {REDIS_URL_ENV: url_a}) == OnlineStoreChoice()  # a URL alone: no
    assert resolve_online_store(None, None, {ONLINE_STORE_ENV: "Redis"}).redis.url == "redis://localhost:6379/0"
    assert resolve_online_store(None, None, {ONLINE_STORE_ENV: "redis", REDIS_URL_ENV: url_a}) == redis_a
    assert resolve_online_store("redis", url_b, {ONLINE_STORE_ENV: "sqlite", REDIS_URL_ENV: url_a}) == _redis(url_b)
    # The work dir keeps its store when nothing is said, and its URL unless another is given.
    assert resolve_online_store(None, None, {}, redis_a) == redis_a
    assert resolve_online_store("redis", None, {}, redis_a) == redis_a
    assert resolve_online_store(None, url_b, {}, redis_a) == _redis(url_b)
    assert resolve_online_store("sqlite", None, {}, redis_a) == OnlineStoreChoice()
    # The password stays in the environment: the config refers to it.
    with_password = resolve_online_store("redis", url_a, {REDIS_PASSWORD_ENV: "s3cret"})
    assert "s3cret" not in with_password.redis.connection_string
    assert f"password=${{{REDIS_PASSWORD_ENV}}}" in with_password.redis.connection_string


@pytest.mark.parametrize("args,env,message", [
    (("mongodb", None), {}, "unknown online store 'mongodb' (from --online-store)"),
    ((None, None), {ONLINE_STORE_ENV: "memcached"}, f"unknown online store 'memcached' (from {ONLINE_STORE_ENV})"),
    (("redis", "redis://h:x/0"), {}, "bad Redis URL 'redis://h:x/0' (from --redis-url)"),
    (("redis", None), {REDIS_URL_ENV: "h:6379"}, f"bad Redis URL 'h:6379' (from {REDIS_URL_ENV})"),
    (("sqlite", "redis://h/0"), {}, "--redis-url 'redis://h/0' is for the Redis online store"),
])
def test_bad_choices_name_the_value_and_where_it_came_from(args, env, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_online_store(*args, env)


# -- through the CLI -------------------------------------------------------------------------------

def _cli(*args: str, env: dict | None = None):
    # The CI environment exports NEXTBEST_REDIS_URL; each call says exactly what it sets.
    # COLUMNS: wide enough that Rich does not wrap the one-line errors.
    base = {ONLINE_STORE_ENV: None, REDIS_URL_ENV: None, REDIS_PASSWORD_ENV: None, "COLUMNS": "400"}
    return CliRunner().invoke(app, list(args), env={**base, **(env or {})})


def test_cli_chooses_redis_keeps_it_for_later_stages_and_switches_back(feast_bank, redis_bank, server, tmp_path):
    paths = _copy(feast_bank, tmp_path / "wd")
    wd = str(paths.root)
    url = server.url.rsplit("/", 1)[0] + "/2"
    result = _cli("features", "apply", "--online-store", "redis", "--redis-url", url, "--workdir", wd)
    assert result.exit_code == 0, result.output
    assert f"Redis online store at {url}" in result.output
    assert current_online_store(paths) == _redis(url)

    # materialize (and training, serving: anything through open_store) needs no flags.
    result = _cli("features", "materialize", "--workdir", wd)
    assert result.exit_code == 0, result.output
    client = redis_py.Redis(port=server.port, db=2)
    assert client.dbsize() == redis_py.Redis(port=server.port, db=0).dbsize() > 1000  # as redis_bank's
    assert type(feast_store.open_store(paths).config.online_store).__name__ == "RedisOnlineStoreConfig"

    # Re-applying without a word keeps Redis; the environment can switch back to SQLite.
    assert _cli("features", "apply", "--workdir", wd).exit_code == 0
    assert current_online_store(paths) == _redis(url)
    result = _cli("features", "apply", "--workdir", wd, env={ONLINE_STORE_ENV: "sqlite"})
    assert result.exit_code == 0, result.output
    assert current_online_store(paths) == OnlineStoreChoice()
    client.flushdb()


def test_cli_takes_the_store_from_the_environment(feast_bank, server, tmp_path):
    paths = _copy(feast_bank, tmp_path / "wd")
    url = server.url.rsplit("/", 1)[0] + "/3"
    result = _cli("features", "apply", "--workdir", str(paths.root),
                  env={ONLINE_STORE_ENV: "redis", REDIS_URL_ENV: url})
    assert result.exit_code == 0, result.output
    assert current_online_store(paths) == _redis(url)


@pytest.mark.parametrize("args,env,named", [
    (("--online-store", "mongodb"), {}, "'mongodb'"),
    ((), {ONLINE_STORE_ENV: "mongodb"}, ONLINE_STORE_ENV),
    (("--online-store", "redis", "--redis-url", "redis://localhost:port/0"), {}, "'redis://localhost:port/0'"),
    (("--online-store", "redis"), {REDIS_URL_ENV: "tcp://x"}, "'tcp://x'"),
])
def test_cli_bad_choices_are_one_clear_line(feast_bank, tmp_path, args, env, named):
    paths = _copy(feast_bank, tmp_path / "wd")
    before = (paths.feast / "feature_store.yaml").read_text()
    result = _cli("features", "apply", *args, "--workdir", str(paths.root), env=env)
    assert result.exit_code == 2
    assert named in result.output and "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1, result.output
    assert (paths.feast / "feature_store.yaml").read_text() == before  # nothing changed


def test_cli_a_config_it_cannot_read_is_named_and_can_be_replaced(feast_bank, tmp_path):
    paths = _copy(feast_bank, tmp_path / "wd")
    config = paths.feast / "feature_store.yaml"
    feast_store.write_store_config(paths, _redis("redis://h:1/0"))
    config.write_text(config.read_text().replace(",db=0,", ",db=0,health_check_interval=5,"))
    result = _cli("features", "apply", "--workdir", str(paths.root))
    assert result.exit_code == 2 and "health_check_interval" in result.output and "Traceback" not in result.output
    assert "feature_store.yaml" in result.output
    result = _cli("features", "apply", "--online-store", "sqlite", "--workdir", str(paths.root))
    assert result.exit_code == 0, result.output
    assert current_online_store(paths) == OnlineStoreChoice()


def test_cli_materialize_with_redis_down_is_one_clear_line(feast_bank, tmp_path):
    paths = _copy(feast_bank, tmp_path / "wd")
    with redis_server() as srv:
        assert _cli("features", "apply", "--online-store", "redis", "--redis-url", srv.url,
                    "--workdir", str(paths.root)).exit_code == 0
        srv.stop()
        started = time.perf_counter()
        result = _cli("features", "materialize", "--workdir", str(paths.root))
    assert result.exit_code == 2
    assert srv.url in result.output and "not reachable" in result.output and "Traceback" not in result.output
    assert time.perf_counter() - started < 10 * DEFAULT_SOCKET_TIMEOUT_S
