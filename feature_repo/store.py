"""Applying the definitions to a work directory's registry and materialising the online store.

`apply` does what `feast apply` does for `feature_repo/`, through Feast's Python API, so that
the file sources point at this work directory's feature tables.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feature_repo.entities import customer_entity
from feature_repo.feature_services import feature_services
from feature_repo.features import feature_view, request_context_view
from feature_repo.online_store import RowSqliteOnlineStore, RowSqliteOnlineStoreConfig
from features.build import PROFILE_VIEW, VIEWS
from nextbest.constants import EVENT_TIMESTAMP
from nextbest.settings import REPO_ROOT, Paths

_READ_BATCH_ROWS = 131_072  # rows decoded from a feature table at a time when materialising


def write_store_config(paths: Paths) -> Path:
    """Writes `<workdir>/feast/feature_store.yaml` from the template in `feature_repo/`."""
    template = (REPO_ROOT / "feature_repo" / "feature_store.yaml").read_text()
    paths.feast.mkdir(parents=True, exist_ok=True)
    target = paths.feast / "feature_store.yaml"
    target.write_text(template.replace("${WORKDIR}", str(paths.root)))
    return target


def open_store(paths: Paths):
    """The work directory's FeatureStore (imports Feast, ~9 s the first time in a process)."""
    from feast import FeatureStore

    if not (paths.feast / "feature_store.yaml").exists():
        raise FileNotFoundError(f"{paths.feast / 'feature_store.yaml'}: not found; run `nextbest features apply` first")
    return FeatureStore(repo_path=str(paths.feast))


def apply(paths: Paths) -> list[str]:
    """Registers entity, feature views and feature services; returns the applied object names."""
    write_store_config(paths)
    store = open_store(paths)
    entity = customer_entity()
    views = {}
    for view in VIEWS:
        path = paths.features / f"{view}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path}: not found; run `nextbest features build` first")
        # The schema comes from the first rows; reading the whole table would cost gigabytes.
        sample = pa.Table.from_batches([next(pq.ParquetFile(path).iter_batches(batch_size=1000))]).to_pandas()
        views[view] = feature_view(view, sample, entity, paths.features)
    context = request_context_view()
    services = feature_services(views, context)
    store.apply([entity, *views.values(), context, *services])
    return [entity.name, *views, context.name, *(s.name for s in services)]


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

    With the project's store (`feature_repo.online_store`, the default in `feature_store.yaml`)
    the rows go from the feature tables straight to its bulk writer: one row per customer within
    the view's TTL before `end`, the value a point-in-time join at `end` gives. The registry
    records the interval as Feast's `materialize` does. Any other online store type goes through
    Feast's `materialize` over the last day.
    """
    store = open_store(paths)
    end_ts = _utc(end) if end is not None else _utc(latest_snapshot(paths))
    if not isinstance(store.config.online_store, RowSqliteOnlineStoreConfig):
        return _feast_materialize(store, paths, end_ts)
    online = RowSqliteOnlineStore()
    rows = 0
    try:
        for view in VIEWS:
            fv = store.get_feature_view(view)
            start = end_ts - fv.ttl if fv.ttl else pd.Timestamp(0, tz="UTC")
            join_keys = [c.name for c in fv.entity_columns]
            ts_field = fv.batch_source.timestamp_field
            batches = latest_batches(paths.features / f"{view}.parquet",
                                     [*join_keys, ts_field, *(f.name for f in fv.features)], join_keys, ts_field,
                                     start, end_ts)
            rows += online.write_batches(store.config, fv, batches)
            store.registry.apply_materialization(fv, store.project, start.to_pydatetime(), end_ts.to_pydatetime())
    finally:
        online.close_connection()
    return rows


def _feast_materialize(store, paths: Paths, end_ts: pd.Timestamp) -> int:
    """Feast's own materialisation of the last day before `end_ts` (any online store)."""
    start = end_ts - timedelta(days=1)
    store.materialize(start_date=start.to_pydatetime(), end_date=(end_ts + timedelta(seconds=1)).to_pydatetime())
    rows = 0
    for view in VIEWS:
        t = pq.read_table(paths.features / f"{view}.parquet", columns=[EVENT_TIMESTAMP]).column(0).to_pandas()
        rows += int(((t > start) & (t <= end_ts)).sum())
    return rows
