"""Training sets in bounded memory: Feast's point-in-time join, one group of customer parts at a time.

A feature service's training set is the entity rows (customer, timestamp, labels) joined, for each
feature view in the service, with the customer's latest feature row at or before the timestamp and
no older than the view's TTL. Feast's own offline store does that join over whole files, and its
memory grows with the bank (8.1 GB for a month of 1,000,000 customers x 247 features).

`features build` writes every view's rows grouped by customer part and records each part's row
count in the file's footer (`nextbest.parts`). Here each group of parts is joined on its own: the
entity rows of those customers, and only those rows of each view's file, so memory follows the
group, not the bank. The definitions (which views, which features, their files, timestamp fields
and TTLs) are read from the Feast registry, and the join has Feast's semantics: the result equals
`get_historical_features(...).to_df()` column for column (a test checks it row for row).

A service that Feast alone can answer (an on-demand view, a source that is not one of our parquet
files, or files without the part counts) goes through Feast's `get_historical_features`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP
from nextbest.features.split import part_rows, partition_of

log = logging.getLogger(__name__)

# Feature rows joined at once (all views of the service together): about 1 GB of Arrow for 250 columns.
GROUP_ROWS = 600_000
_TS = "__feature_ts"


@dataclass(frozen=True)
class ViewSource:
    """One feature view of a service, as the join needs it."""

    name: str
    path: Path
    features: list[str]
    timestamp_field: str
    ttl: timedelta | None


def service_sources(store, service: str) -> list[ViewSource] | None:
    """The service's views with their files, or None when one is not a parquet file keyed by customer."""
    from feast import FileSource
    from feast.errors import FeatureViewNotFoundException

    out = []
    for projection in store.get_feature_service(service).feature_view_projections:
        try:
            view = store.get_feature_view(projection.name)
        except FeatureViewNotFoundException:  # an on-demand or stream view: Feast's own join
            return None
        source = view.batch_source
        if not isinstance(source, FileSource) or list(view.join_keys) != [CUSTOMER_ID]:
            return None
        out.append(ViewSource(projection.name_to_use(), Path(source.path),
                              [f.name for f in projection.features], source.timestamp_field, view.ttl or None))
    return out


def historical_features(store, entity_df: pd.DataFrame, service: str, group_rows: int = GROUP_ROWS) -> pd.DataFrame:
    """`store.get_historical_features(entity_df, service).to_df()`, one group of customer parts at a time
    when the service's files record their parts (see the module's docstring)."""
    sources = service_sources(store, service)
    parts = [part_rows(s.path) for s in sources] if sources else [None]
    if any(p is None for p in parts) or len({len(p) for p in parts}) != 1:
        why = ("a view is not a parquet file keyed by customer" if not sources else
               "the feature files do not record the same customer parts")
        log.info("training set for %s through Feast's offline store (%s)", service, why)
        job = store.get_historical_features(entity_df=entity_df, features=store.get_feature_service(service))
        return job.to_df()
    return partitioned_join(entity_df, sources, parts, group_rows)


def partitioned_join(entity_df: pd.DataFrame, sources: list[ViewSource], parts: list[list[int]],
                     group_rows: int = GROUP_ROWS) -> pd.DataFrame:
    """The point-in-time join of `entity_df` with each source, by groups of consecutive parts."""
    n_parts = len(parts[0])
    bounds = [np.concatenate([[0], np.cumsum(p)]) for p in parts]
    per_part = np.sum(parts, axis=0)
    entity_part = partition_of(entity_df[CUSTOMER_ID].to_numpy(), n_parts)
    entity = pa.Table.from_pandas(entity_df, preserve_index=False)
    ts_type = entity.schema.field(EVENT_TIMESTAMP).type
    key_type = entity.schema.field(CUSTOMER_ID).type
    tables = []
    for first, last in _groups(per_part, group_rows):
        table = entity.filter(pa.array((entity_part >= first) & (entity_part < last))).sort_by(EVENT_TIMESTAMP)
        for source, b in zip(sources, bounds):
            right = _read_rows(source, int(b[first]), int(b[last]), ts_type, key_type)
            table = table.join_asof(right, on=EVENT_TIMESTAMP, by=CUSTOMER_ID, right_on=_TS,
                                    tolerance=-_ttl_units(source.ttl, ts_type))
        tables.append(table)
    out = pa.concat_tables(tables, promote_options="permissive")
    # In time and customer order, as training reads it: sorted here, a pandas sort would copy the frame twice.
    out = out.take(pc.sort_indices(out, sort_keys=[(EVENT_TIMESTAMP, "ascending"), (CUSTOMER_ID, "ascending")]))
    # Times in microseconds, as Feast's DuckDB store returns them.
    ts = out.column(EVENT_TIMESTAMP)
    if pa.types.is_timestamp(ts.type) and ts.type.unit == "ns":
        out = out.set_column(out.schema.get_field_index(EVENT_TIMESTAMP), EVENT_TIMESTAMP,
                             ts.cast(pa.timestamp("us", ts.type.tz), safe=False))
    # One conversion at the end, as Feast converts its result; Arrow's buffers are freed as it goes.
    return out.to_pandas(self_destruct=True, split_blocks=True)


def in_time_order(df: pd.DataFrame) -> pd.DataFrame:
    """`df` sorted by time, then customer, with a fresh index: without a copy when it already is (as the
    join by parts returns it), else with pandas' sort."""
    ts, ids = df[EVENT_TIMESTAMP].to_numpy(dtype="datetime64[ns]"), df[CUSTOMER_ID].to_numpy()
    later, same = ts[1:] > ts[:-1], ts[1:] == ts[:-1]
    if len(df) < 2 or (later | (same & (ids[1:] >= ids[:-1]))).all():
        df.index = pd.RangeIndex(len(df))
        return df
    return df.sort_values([EVENT_TIMESTAMP, CUSTOMER_ID]).reset_index(drop=True)


def _groups(per_part: np.ndarray, group_rows: int) -> list[tuple[int, int]]:
    """Consecutive parts grouped so that each group holds about `group_rows` feature rows (at least one part)."""
    groups, start, rows = [], 0, 0
    for i, n in enumerate(per_part):
        if rows and rows + n > group_rows:
            groups.append((start, i))
            start, rows = i, 0
        rows += int(n)
    groups.append((start, len(per_part)))
    return groups


def _read_rows(source: ViewSource, start: int, stop: int, ts_type: pa.DataType, key_type: pa.DataType) -> pa.Table:
    """Rows [start, stop) of the view's file (customer, timestamp, the service's features), sorted by time,
    the key and the timestamp in the entity rows' types."""
    pf = pq.ParquetFile(source.path)
    columns = [CUSTOMER_ID, source.timestamp_field, *source.features]
    groups, offset, first = [], 0, None
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if offset + n > start and offset < stop:
            groups.append(g)
            first = offset if first is None else first
        offset += n
    missing = [c for c in columns if c not in pf.schema_arrow.names]
    if missing:
        raise ValueError(f"{source.path}: no column(s) {missing} that the Feast registry's view {source.name!r} "
                         "names: run `nextbest features build` and `nextbest features apply` again")
    if not groups:
        table = pf.schema_arrow.empty_table().select(columns)
    else:
        table = pf.read_row_groups(groups, columns=columns).slice(start - first, stop - start)
    ts = table.column(source.timestamp_field)
    if ts.type != ts_type:  # naive times are UTC, as Feast reads them (Arrow stores UTC either way)
        ts = ts.cast(ts_type, safe=False)
    table = table.drop_columns([source.timestamp_field]).append_column(_TS, ts)
    if table.schema.field(CUSTOMER_ID).type != key_type:
        table = table.set_column(0, CUSTOMER_ID, table.column(CUSTOMER_ID).cast(key_type))
    return table.sort_by(_TS)


def _ttl_units(ttl: timedelta | None, ts_type: pa.DataType) -> int:
    """The TTL in the timestamp's unit (no TTL: any age)."""
    per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[ts_type.unit]
    if ttl is None:
        return np.iinfo(np.int64).max // 4  # any age, with room for the join's own arithmetic
    return int(round(ttl.total_seconds() * per_second))
