"""Applying the definitions to a work directory's registry and materialising the online store.

`apply` does what `feast apply` does for `feature_repo/`, through Feast's Python API, so that
the file sources point at this work directory's feature tables.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from feature_repo.entities import customer_entity
from feature_repo.feature_services import feature_services
from feature_repo.features import feature_view, request_context_view
from features.build import PROFILE_VIEW, VIEWS
from nextbest.settings import REPO_ROOT, Paths



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
        sample = pq.read_table(path).slice(0, 1000).to_pandas()
        views[view] = feature_view(view, sample, entity, paths.features)
    context = request_context_view()
    services = feature_services(views, context)
    store.apply([entity, *views.values(), context, *services])
    return [entity.name, *views, context.name, *(s.name for s in services)]


def latest_snapshot(paths: Paths) -> pd.Timestamp:
    ts = pq.read_table(paths.features / f"{PROFILE_VIEW}.parquet", columns=["event_timestamp"]).column(0)
    return pd.Timestamp(max(ts.to_pylist()))


def materialize(paths: Paths, end: datetime | None = None) -> int:
    """Loads the latest snapshot of every view into the online store; returns rows written."""
    store = open_store(paths)
    end_ts = pd.Timestamp(end) if end is not None else latest_snapshot(paths)
    if end_ts.tzinfo is None:
        end_ts = end_ts.tz_localize("UTC")
    start = end_ts - timedelta(days=1)
    store.materialize(start_date=start.to_pydatetime(), end_date=(end_ts + timedelta(seconds=1)).to_pydatetime())
    rows = 0
    for view in VIEWS:
        t = pq.read_table(paths.features / f"{view}.parquet", columns=["event_timestamp"]).column(0).to_pandas()
        rows += int(((t > start) & (t <= end_ts)).sum())
    return rows
