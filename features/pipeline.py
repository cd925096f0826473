"""Raw tables in the work directory -> feature tables in `features/` (the I/O edge of `features/`)."""

from __future__ import annotations

from pathlib import Path

from nextbest.config import Catalogue, SegmentsConfig, load_segments
from nextbest.features.build import build_feature_tables
from nextbest.io import atomic_write_parquet, read_raw
from nextbest.settings import Paths


def build_features_to(paths: Paths, catalogue: Catalogue, segments: SegmentsConfig | None = None) -> dict[str, Path]:
    """Validates the raw tables, builds every feature view and writes `features/<view>.parquet`.

    Nothing is written if any raw table fails validation.
    """
    raw = read_raw(paths.raw, catalogue.ids)
    tables = build_feature_tables(raw, catalogue, segments or load_segments())
    return {name: atomic_write_parquet(df, paths.features / f"{name}.parquet") for name, df in tables.items()}
