"""Feast feature views, their schemas derived from the feature tables that `features/` builds."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
from feast import Entity, FeatureView, Field, OnDemandFeatureView, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float32, Float64, Int64, String

from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP, REALTIME_FEATURES, REALTIME_PUSH_SOURCE, REALTIME_VIEW
from nextbest.feature_repo.data_sources import file_source

# Snapshots are month ends: a value is valid until the next one (at most 31 days later).
SNAPSHOT_TTL = timedelta(days=31)


def _feast_type(dtype) -> object:
    if pd.api.types.is_float_dtype(dtype):
        return Float32
    if pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
        return Int64
    return String


def feature_view(view: str, sample: pd.DataFrame, entity: Entity, features_dir: Path,
                 offline_store: str = "duckdb", ttl: timedelta | None = SNAPSHOT_TTL) -> FeatureView:
    """A feature view over `features/<view>.parquet` whose schema follows the table's columns; its
    source is a file for the DuckDB offline store, a Spark query over the same file for Spark's. A
    row is valid for `ttl` after its timestamp (None: until the customer's next row)."""
    fields = [Field(name=c, dtype=_feast_type(sample[c].dtype))
              for c in sample.columns if c not in (CUSTOMER_ID, EVENT_TIMESTAMP)]
    if offline_store == "spark":
        from nextbest.feature_repo.offline import spark_source

        source = spark_source(features_dir, view, list(sample.columns))
    else:
        source = file_source(features_dir, view)
    return FeatureView(name=view, entities=[entity], ttl=ttl or timedelta(0), schema=fields, source=source, online=True)


def request_context_view() -> OnDemandFeatureView:
    """On-demand features of the request (channel, hour, weekday): the same function runs for
    training sets (request columns in the entity frame) and online (request data in the row)."""
    source = RequestSource(name="request_context_source", schema=[
        Field(name="channel", dtype=String), Field(name="hour", dtype=Int64), Field(name="weekday", dtype=Int64)])

    @on_demand_feature_view(
        sources=[source],
        schema=[Field(name="channel_digital", dtype=Int64), Field(name="hour_sin", dtype=Float64),
                Field(name="hour_cos", dtype=Float64), Field(name="is_weekend", dtype=Int64),
                Field(name="is_evening", dtype=Int64)],
        mode="python",
    )
    def request_context(inputs: dict) -> dict:
        import math

        digital = ("mobile_app", "web", "email", "push")
        hours = [int(h) for h in inputs["hour"]]
        return {
            "channel_digital": [int(c in digital) for c in inputs["channel"]],
            "hour_sin": [math.sin(2 * math.pi * h / 24) for h in hours],
            "hour_cos": [math.cos(2 * math.pi * h / 24) for h in hours],
            "is_weekend": [int(int(d) >= 5) for d in inputs["weekday"]],
            "is_evening": [int(h >= 18) for h in hours],
        }

    return request_context


# Short-term context from `POST /events`, written online as events arrive (push source).
REALTIME_FIELDS = {n: (Int64 if n.endswith("_at") else String if n.endswith("_product") else Float64)
                   for n in REALTIME_FEATURES}
REALTIME_TTL = timedelta(days=30)


def realtime_view(entity: Entity, features_dir: Path) -> FeatureView:
    """The customer's short-term context (latest salary, deposit, loan, product-page view; epoch seconds).

    Fed online through a push source by the service's `/events`; its batch file
    (`features/customer_realtime.parquet`, empty until an event log is exported) keeps the
    view valid for `feast apply` and historical retrieval.
    """
    from feast import PushSource

    push = PushSource(name=REALTIME_PUSH_SOURCE, batch_source=file_source(features_dir, REALTIME_VIEW))
    return FeatureView(name=REALTIME_VIEW, entities=[entity], ttl=REALTIME_TTL, online=True, source=push,
                       schema=[Field(name=n, dtype=t) for n, t in REALTIME_FIELDS.items()])


def empty_realtime_table() -> pd.DataFrame:
    """The batch file's columns with no rows (pandas dtypes matching REALTIME_FIELDS)."""
    dtypes = {Float64: "float64", Int64: "int64", String: "object"}
    frame = pd.DataFrame({CUSTOMER_ID: pd.Series(dtype="object"),
                          EVENT_TIMESTAMP: pd.Series(dtype="datetime64[us, UTC]")})
    for name, t in REALTIME_FIELDS.items():
        frame[name] = pd.Series(dtype=dtypes[t])
    return frame
