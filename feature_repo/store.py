"""Applying the definitions to a work directory's registry and materialising the online store.

`apply` does what `feast apply` does for `feature_repo/`, through Feast's Python API, so that
the file sources point at this work directory's feature tables. It also writes the work
directory's `feast/feature_store.yaml`, which records the online store every later stage uses:
the project's SQLite store (the default) or Redis (`OnlineStoreChoice`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nextbest.constants import EVENT_TIMESTAMP, REALTIME_VIEW
from nextbest.feature_repo.entities import customer_entity
from nextbest.feature_repo.feature_services import add_bank_views, bank_services, bank_view_names, feature_services
from nextbest.feature_repo.features import empty_realtime_table, feature_view, realtime_view, request_context_view
from nextbest.feature_repo.offline import OfflineStoreChoice, current_offline_store, with_offline_store
from nextbest.feature_repo.online_store import STORE_TYPE, RowSqliteOnlineStore, RowSqliteOnlineStoreConfig
from nextbest.feature_repo.redis_store import (DEFAULT_REDIS_URL, REDIS_PASSWORD_ENV, OnlineStoreUnavailable,
                                               RedisTarget, redis_target)
from nextbest.feature_repo.versions import write_record
from nextbest.features.build import PROFILE_VIEW, VIEWS
from nextbest.io import atomic_write_parquet
from nextbest.settings import Paths

_READ_BATCH_ROWS = 131_072  # rows decoded from a feature table at a time when materialising

ONLINE_STORE_ENV = "NEXTBEST_ONLINE_STORE"
REDIS_URL_ENV = "NEXTBEST_REDIS_URL"
SQLITE, REDIS = "sqlite", "redis"
ONLINE_STORES = (SQLITE, REDIS)
_TEMPLATES = {SQLITE: "feature_store.yaml", REDIS: "feature_store.redis.yaml"}


@dataclass(frozen=True)
class OnlineStoreChoice:
    """The online store of a work directory: `sqlite` (the project's row-per-customer SQLite
    file in `feast/`, the default) or `redis` (Feast's Redis store at `redis`)."""

    kind: Literal["sqlite", "redis"] = SQLITE
    redis: RedisTarget | None = None

    def __post_init__(self) -> None:
        if self.kind not in ONLINE_STORES:
            raise ValueError(f"unknown online store {self.kind!r}; choose one of: {', '.join(ONLINE_STORES)}")
        if (self.kind == REDIS) != (self.redis is not None):
            raise ValueError("a Redis target goes with the redis online store, and only with it")

    def describe(self) -> str:
        """A few words for messages: which store, and where."""
        return f"Redis online store at {self.redis.url}" if self.redis else "SQLite online store"


def resolve_online_store(online_store: str | None, redis_url: str | None, env: Mapping[str, str],
                         current: OnlineStoreChoice | Callable[[], OnlineStoreChoice | None] | None = None,
                         ) -> OnlineStoreChoice:
    """The online store that `features apply` writes into the work directory.

    Each setting comes from its flag, else its environment variable, else what the work
    directory already uses, else the default (SQLite; Redis at `redis://localhost:6379/0`).
    Keeping the current store when nothing is said means re-applying after a feature rebuild
    never moves a work directory off Redis behind its users' backs.

    Args:
        online_store: `--online-store` (`sqlite` or `redis`), or None.
        redis_url: `--redis-url`, or None.
        env: the environment (`NEXTBEST_ONLINE_STORE`, `NEXTBEST_REDIS_URL`,
            `NEXTBEST_REDIS_PASSWORD`).
        current: the work directory's present choice (`current_online_store`), if any, or a
            function returning it, called only when flags and environment leave a gap (so a
            config that cannot be read does not stand in the way of choosing afresh).

    Raises:
        ValueError: an unknown store, a malformed URL, or a URL with the SQLite store; the
            message names the value and where it came from.
    """
    source = "--online-store" if online_store else ONLINE_STORE_ENV
    kind = (online_store or env.get(ONLINE_STORE_ENV) or "").strip().lower() or None
    if kind is not None and kind not in ONLINE_STORES:
        given = online_store if online_store else env.get(ONLINE_STORE_ENV)
        raise ValueError(f"unknown online store {given!r} (from {source}); choose one of: {', '.join(ONLINE_STORES)}")
    if kind is None or (kind == REDIS and not (redis_url or env.get(REDIS_URL_ENV))):
        current = current() if callable(current) else current
    else:
        current = None
    kind = kind or (current.kind if current else SQLITE)
    if kind == SQLITE:
        if redis_url:
            raise ValueError(f"--redis-url {redis_url!r} is for the Redis online store; add --online-store redis")
        return OnlineStoreChoice(SQLITE)
    url, url_source = (redis_url, "--redis-url") if redis_url else (env.get(REDIS_URL_ENV), REDIS_URL_ENV)
    if url:
        return OnlineStoreChoice(REDIS, redis_target(url, env, url_source))
    if current is not None and current.redis is not None:
        return current
    return OnlineStoreChoice(REDIS, redis_target(DEFAULT_REDIS_URL, env))


def current_online_store(paths: Paths) -> OnlineStoreChoice | None:
    """The online store the work directory's `feast/feature_store.yaml` names, if it is one of
    ours (None when there is no config yet, or it names another store)."""
    import yaml

    config = paths.feast / "feature_store.yaml"
    if not config.exists():
        return None
    # Read without Feast's environment substitution, so a password reference stays one.
    online = (yaml.safe_load(config.read_text()) or {}).get("online_store") or {}
    if online.get("type") == STORE_TYPE:
        return OnlineStoreChoice(SQLITE)
    if online.get("type") == REDIS and online.get("redis_type", REDIS) == REDIS:
        try:
            return OnlineStoreChoice(REDIS, RedisTarget.from_connection_string(str(online["connection_string"])))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{config}: {exc}") from None
    return None


def sqlite_store_file(paths: Paths) -> Path | None:
    """The file of the work directory's SQLite online store, or None when it uses another store."""
    import yaml

    if current_online_store(paths) != OnlineStoreChoice(SQLITE):
        return None
    online = (yaml.safe_load((paths.feast / "feature_store.yaml").read_text()) or {}).get("online_store") or {}
    path = Path(str(online.get("path", "online_store.db")))
    return path if path.is_absolute() else paths.feast / path


def write_store_config(paths: Paths, choice: OnlineStoreChoice | None = None,
                       offline: OfflineStoreChoice | None = None) -> Path:
    """Writes `<workdir>/feast/feature_store.yaml` from the template in `feature_repo/` for the
    chosen online and offline stores (default: the work directory's current ones, else SQLite and DuckDB)."""
    choice = choice or current_online_store(paths) or OnlineStoreChoice()
    offline = offline or current_offline_store(paths) or OfflineStoreChoice()
    text = (Path(__file__).resolve().parent / _TEMPLATES[choice.kind]).read_text().replace(
        "${WORKDIR}", str(paths.root))
    text = with_offline_store(text, offline)
    if choice.redis is not None:
        text = text.replace("${REDIS_CONNECTION_STRING}", choice.redis.connection_string)
    paths.feast.mkdir(parents=True, exist_ok=True)
    target = paths.feast / "feature_store.yaml"
    target.write_text(text)
    return target


def open_store(paths: Paths):
    """The work directory's FeatureStore (imports Feast, ~9 s the first time in a process)."""
    from feast import FeatureStore

    if not (paths.feast / "feature_store.yaml").exists():
        raise FileNotFoundError(f"{paths.feast / 'feature_store.yaml'}: not found; run `nextbest features apply` first")
    return FeatureStore(repo_path=str(paths.feast))


def apply(paths: Paths, online_store: OnlineStoreChoice | None = None,
          offline_store: OfflineStoreChoice | None = None) -> list[str]:
    """Registers entity, feature views and feature services; returns the applied object names.

    Args:
        paths: the work directory.
        online_store: the online store to record in `feast/feature_store.yaml` (default: the
            one already there, else SQLite). Switching stores leaves the new one empty until
            the next `materialize`.
        offline_store: the offline store that serves training sets (default: the one already
            there, else DuckDB); its sources read the same feature files.
    """
    offline_store = offline_store or current_offline_store(paths) or OfflineStoreChoice()
    write_store_config(paths, online_store, offline_store)
    store = open_store(paths)
    entity = customer_entity()
    views = {}
    for view in VIEWS:
        path = paths.features / f"{view}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path}: not found; run `nextbest features build` first")
        # The schema comes from the first rows; reading the whole table would cost gigabytes.
        sample = pa.Table.from_batches([next(pq.ParquetFile(path).iter_batches(batch_size=1000))]).to_pandas()
        views[view] = feature_view(view, sample, entity, paths.features, offline_store.kind)
    context = request_context_view()
    services = feature_services(views, context)
    record = add_bank_views(paths, store, entity, offline_store.kind, views)
    bank, unavailable = bank_services(views, record.versions)
    services += bank
    realtime_file = paths.features / f"{REALTIME_VIEW}.parquet"
    if not realtime_file.exists():
        atomic_write_parquet(empty_realtime_table(), realtime_file)
    realtime = realtime_view(entity, paths.features)
    with _reachable(store):  # Redis is only contacted when a view is removed
        store.apply([entity, *views.values(), realtime, context, *services])
        # A version that can no longer be applied must not linger in the registry, naming what is gone.
        for name in unavailable:
            if name in {s.name for s in store.list_feature_services()}:
                store.delete_feature_service(name)
    write_record(paths, replace(record, unavailable=tuple(sorted(unavailable.items()))))
    return [entity.name, *views, realtime.name, context.name, *(s.name for s in services)]


def latest_snapshot(paths: Paths) -> pd.Timestamp:
    ts = pq.read_table(paths.features / f"{PROFILE_VIEW}.parquet", columns=[EVENT_TIMESTAMP]).column(0)
    return pd.Timestamp(pc.max(ts).as_py())


def _latest_positions(keys: pa.Table, join_keys: list[str], timestamp_field: str) -> np.ndarray:
    """Positions of the last row per entity (by time) in a table of join keys and timestamps."""
    n = keys.num_rows
    if n < 2:
        return np.arange(n)
    if len(join_keys) == 1:
        # Feature tables are written in entity-then-time order: check that, rather than sort.
        key, ts = keys.column(join_keys[0]), keys.column(timestamp_field)
        head, tail = slice(0, n - 1), slice(1, None)
        same = pc.equal(key[head], key[tail])
        in_order = pc.or_(pc.less(key[head], key[tail]), pc.and_(same, pc.less_equal(ts[head], ts[tail])))
        if pc.all(in_order).as_py():
            return np.append(np.flatnonzero(~same.to_numpy()), n - 1)
    order = pc.sort_indices(keys, sort_keys=[*((k, "ascending") for k in join_keys), (timestamp_field, "ascending")])
    ordered = keys.take(order)
    last = np.zeros(n, dtype=bool)
    last[-1] = True
    for k in join_keys:
        col = ordered.column(k)
        last[:-1] |= pc.fill_null(pc.not_equal(col[:-1], col[1:]), True).to_numpy()
    return np.sort(order.to_numpy()[last])


def latest_batches(path: Path, columns: list[str], join_keys: list[str], timestamp_field: str,
                   start: pd.Timestamp, end: pd.Timestamp) -> Iterator[pa.RecordBatch]:
    """The last row per entity with `start <= timestamp <= end` in a feature table (what Feast's
    materialisation of that interval writes), in file order, batch by batch.

    A first pass reads only the keys and timestamps to choose the rows; the second reads the
    row groups holding them, so memory stays at one batch whatever the table's size.
    """
    parquet = pq.ParquetFile(path)
    ts_type = parquet.schema_arrow.field(timestamp_field).type
    lo, hi = (pa.scalar(t.to_pydatetime(), pa.timestamp("us", tz="UTC")).cast(ts_type) for t in (start, end))
    keys = parquet.read(columns=[*join_keys, timestamp_field])
    ts = keys.column(timestamp_field)
    in_window = np.flatnonzero(pc.and_(pc.greater_equal(ts, lo), pc.less_equal(ts, hi)).to_numpy(zero_copy_only=False))
    rows = in_window[_latest_positions(keys.take(in_window), join_keys, timestamp_field)]
    offset = 0
    for group in range(parquet.num_row_groups):
        size = parquet.metadata.row_group(group).num_rows
        first, stop = np.searchsorted(rows, [offset, offset + size])
        if stop > first:
            at = offset
            for batch in parquet.iter_batches(batch_size=_READ_BATCH_ROWS, row_groups=[group], columns=columns):
                b_first, b_stop = np.searchsorted(rows, [at, at + batch.num_rows])
                if b_stop > b_first:
                    yield batch.take(pa.array(rows[b_first:b_stop] - at))
                at += batch.num_rows
        offset += size


def latest_rows(path: Path, columns: list[str], join_keys: list[str], timestamp_field: str,
                start: pd.Timestamp, end: pd.Timestamp) -> pa.Table:
    """`latest_batches` as one table."""
    schema = pa.schema([pq.read_schema(path).field(c) for c in columns])
    return pa.Table.from_batches(list(latest_batches(path, columns, join_keys, timestamp_field, start, end)), schema)


def _utc(ts: datetime | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(ts)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def materialize(paths: Paths, end: datetime | None = None) -> int:
    """Loads each view's latest row per customer up to `end` (default: the latest snapshot) into
    the online store; returns the rows written (customers x views).

    With either of the work directory's stores (`OnlineStoreChoice`) the rows go from the
    feature tables straight to a bulk writer: one row per customer within the view's TTL before
    `end`, the value a point-in-time join at `end` gives. The project's SQLite store gets them
    through `RowSqliteOnlineStore.write_batches`; Redis through
    `nextbest.feature_repo.redis_store.write_batches`, in Feast's own layout, so stock
    `get_online_features` serves them. The registry records the interval as Feast's
    `materialize` does. Any other online store goes through Feast's `materialize` over the last
    day.

    Raises:
        OnlineStoreUnavailable: Redis cannot be reached (checked before any work).
    """
    store = open_store(paths)
    end_ts = _utc(end) if end is not None else _utc(latest_snapshot(paths))
    config = store.config.online_store
    if isinstance(config, RowSqliteOnlineStoreConfig):
        online = RowSqliteOnlineStore()
        try:
            return _write_latest(store, paths, end_ts, partial(online.write_batches, store.config))
        finally:
            online.close_connection()
    if _is_single_redis(config):
        from feast.infra.online_stores.redis import RedisOnlineStore

        from nextbest.feature_repo.redis_store import write_batches

        client = RedisOnlineStore()._get_client(config)  # Feast's own client, as reads will use
        try:
            with _reachable(store):
                client.ping()
                return _write_latest(store, paths, end_ts, partial(write_batches, client, store.config))
        finally:
            client.close()
    with _reachable(store):
        return _feast_materialize(store, paths, end_ts)


def _write_latest(store, paths: Paths, end_ts: pd.Timestamp, write) -> int:
    """Writes each view's latest row per customer within its TTL before `end_ts` with
    `write(feature_view, batches) -> rows`, and records the interval in the registry."""
    rows = 0
    for view in (*VIEWS, *bank_view_names(store, paths.features)):
        fv = store.get_feature_view(view)
        start = end_ts - fv.ttl if fv.ttl else pd.Timestamp(0, tz="UTC")
        join_keys = [c.name for c in fv.entity_columns]
        ts_field = fv.batch_source.timestamp_field
        batches = latest_batches(paths.features / f"{view}.parquet",
                                 [*join_keys, ts_field, *(f.name for f in fv.features)], join_keys, ts_field,
                                 start, end_ts)
        rows += write(fv, batches)
        store.registry.apply_materialization(fv, store.project, start.to_pydatetime(), end_ts.to_pydatetime())
    return rows


def _is_single_redis(config) -> bool:
    from feast.infra.online_stores.redis import RedisOnlineStoreConfig, RedisType

    return isinstance(config, RedisOnlineStoreConfig) and config.redis_type == RedisType.redis


def _redis_location(config) -> str:
    """`redis://host:port/db` of a Redis store config (never its password: Feast has already
    substituted the environment into the connection string)."""
    from feast.infra.online_stores.redis import RedisOnlineStore

    nodes, params = RedisOnlineStore._parse_connection_string(config.connection_string)
    hosts = ",".join(f"{n.get('host')}:{n.get('port')}" for n in nodes)
    return f"{'rediss' if params.get('ssl') else 'redis'}://{hosts}/{params.get('db', 0)}"


@contextmanager
def _reachable(store):
    """Turns a Redis online store that cannot be reached, or refuses a login or a write, into
    `OnlineStoreUnavailable` naming it."""
    try:
        yield
    except Exception as exc:
        from redis.exceptions import AuthenticationError, ResponseError
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        if not isinstance(exc, (RedisConnectionError, RedisTimeoutError, ResponseError)):
            raise
        where = f"Redis online store at {_redis_location(store.config.online_store)} (from feast/feature_store.yaml)"
        cause = str(exc).rstrip(".")
        if isinstance(exc, AuthenticationError):
            raise OnlineStoreUnavailable(f"{where} refused the login: {cause} (the password is read from "
                                         f"{REDIS_PASSWORD_ENV})") from exc
        if isinstance(exc, ResponseError):  # out of memory, read-only replica, ...
            raise OnlineStoreUnavailable(f"{where} refused a write: {cause}") from exc
        raise OnlineStoreUnavailable(f"{where} not reachable: {cause}") from exc


def _feast_materialize(store, paths: Paths, end_ts: pd.Timestamp) -> int:
    """Feast's own materialisation of the last day before `end_ts` (any online store)."""
    start = end_ts - timedelta(days=1)
    store.materialize(start_date=start.to_pydatetime(), end_date=(end_ts + timedelta(seconds=1)).to_pydatetime())
    rows = 0
    for view in (*VIEWS, *bank_view_names(store, paths.features)):
        t = pq.read_table(paths.features / f"{view}.parquet", columns=[EVENT_TIMESTAMP]).column(0).to_pandas()
        rows += int(((t > start) & (t <= end_ts)).sum())
    return rows
