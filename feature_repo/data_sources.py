"""Feast file sources: one parquet file per feature view in the work directory's `features/`."""

from __future__ import annotations

from pathlib import Path

from feast import FileSource

from nextbest.constants import EVENT_TIMESTAMP


def file_source(features_dir: Path, view: str) -> FileSource:
    return FileSource(name=f"{view}_source", path=str((features_dir / f"{view}.parquet").resolve()),
                      timestamp_field=EVENT_TIMESTAMP)
