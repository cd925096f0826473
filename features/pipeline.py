"""Raw tables in the work directory -> feature tables in `features/` (the I/O edge of `features/`)."""

from __future__ import annotations

from pathlib import Path

from nextbest.config import Catalogue, SegmentsConfig, load_segments
from nextbest.features.partitioned import BuildOptions, build_partitioned
from nextbest.settings import Paths


def build_features_to(paths: Paths, catalogue: Catalogue, segments: SegmentsConfig | None = None,
                      options: BuildOptions = BuildOptions(), engine=None, progress=None) -> dict[str, Path]:
    """Validates the raw tables, builds every feature view and writes `features/<view>.parquet`.

    The bank is built in as many parts by customer as keep memory under `options.memory_limit`.
    Nothing is written if any raw table fails validation.
    """
    kwargs = {"progress": progress} if progress else {}
    return build_partitioned(paths.raw, paths.features, catalogue, segments or load_segments(), options, engine,
                             **kwargs)
