"""Feast feature views, their schemas derived from the feature tables that `features/` builds."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
from feast import Entity, FeatureView, Field
from feast.types import Float32, Int64, String

from feature_repo.data_sources import file_source
from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP

# Snapshots are month ends: a value is valid until the next one (at most 31 days later).
SNAPSHOT_TTL = timedelta(days=31)


def _feast_type(dtype) -> object:
    if pd.api.types.is_float_dtype(dtype):
        return Float32
    if pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
        return Int64
    return String


def feature_view(view: str, sample: pd.DataFrame, entity: Entity, features_dir: Path) -> FeatureView:
    """A feature view over `features/<view>.parquet` whose schema follows the table's columns."""
    fields = [Field(name=c, dtype=_feast_type(sample[c].dtype))
              for c in sample.columns if c not in (CUSTOMER_ID, EVENT_TIMESTAMP)]
    return FeatureView(name=view, entities=[entity], ttl=SNAPSHOT_TTL, schema=fields,
                       source=file_source(features_dir, view), online=True)
