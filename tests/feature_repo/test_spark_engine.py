"""The feature build on Spark (local mode, `local[2]`, a real JVM): the same tables as the embedded
engine, row for row; bad data and an unreachable master are one-line errors."""

from __future__ import annotations

import shutil
import time

import pandas as pd
import pytest

from nextbest.config import load_segments
from nextbest.features.build import VIEWS
from nextbest.features.partitioned import BuildOptions, build_partitioned
from nextbest.schema import SchemaError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spark_engine():
    import pyspark  # noqa: F401  (the spark extra is part of the test install)

    from nextbest.features.spark import SparkEngine

    if shutil.which("java") is None:
        pytest.fail("Spark needs Java 17+ (.ci/run installs default-jre-headless)")
    return SparkEngine(workers=2)


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory, raw):
    root = tmp_path_factory.mktemp("spark_raw")
    for name, df in raw.items():
        # Several row groups per table: the split runs as several Spark tasks.
        df.to_parquet(root / f"{name}.parquet", index=False, row_group_size=4000)
    return root


def test_spark_writes_the_same_tables_as_the_embedded_engine(tmp_path, raw_dir, catalogue, spark_engine,
                                                             monkeypatch):
    from nextbest.features import split

    monkeypatch.setattr(split, "SPLIT_UNIT_ROWS", 8000)
    options = BuildOptions(parts=3, workers=2)
    local = build_partitioned(raw_dir, tmp_path / "local", catalogue, load_segments(), options,
                              progress=lambda _: None)
    messages = []
    spark = build_partitioned(raw_dir, tmp_path / "spark", catalogue, load_segments(), options, engine=spark_engine,
                              progress=messages.append)
    assert any("on spark" in m for m in messages)
    for view in VIEWS:
        a, b = pd.read_parquet(local[view]), pd.read_parquet(spark[view])
        assert len(a) > 10_000
        pd.testing.assert_frame_equal(a, b)  # row for row, in the same order


def test_feasts_spark_offline_store_serves_the_training_set_of_spark_built_tables(tmp_path, raw_dir, catalogue,
                                                                                  spark_engine):
    """Spark builds the tables, Feast's Spark offline store joins the training set: the same rows and values
    as the DuckDB offline store over the same files."""
    from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP, NBP_FEATURE_SERVICE
    from nextbest.feature_repo import store as feast_store
    from nextbest.feature_repo.offline import OfflineStoreChoice, current_offline_store
    from nextbest.feature_repo.retrieval import historical_features
    from nextbest.settings import Paths

    stores = {}
    for kind in ("spark", "duckdb"):
        paths = Paths.from_workdir(tmp_path / kind).ensure()
        build_partitioned(raw_dir, paths.features, catalogue, load_segments(), BuildOptions(parts=3, workers=2),
                          engine=spark_engine if kind == "spark" else None, progress=lambda _: None)
        choice = OfflineStoreChoice(kind, "local[2]" if kind == "spark" else None)
        feast_store.apply(paths, offline_store=choice)
        assert current_offline_store(paths) == choice
        stores[kind] = feast_store.open_store(paths)
    holdings = pd.read_parquet(tmp_path / "duckdb" / "features" / "customer_holdings.parquet",
                               columns=[CUSTOMER_ID, EVENT_TIMESTAMP])
    entity = holdings.sample(400, random_state=3).reset_index(drop=True)
    entity[EVENT_TIMESTAMP] = pd.to_datetime(entity[EVENT_TIMESTAMP], utc=True) + pd.Timedelta(days=3)
    entity["label"] = range(len(entity))
    assert stores["spark"].config.offline_store.type == "spark"
    assert stores["duckdb"].config.offline_store.type == "duckdb"
    got = {kind: historical_features(store, entity, NBP_FEATURE_SERVICE) for kind, store in stores.items()}

    def normal(df):
        df = df.copy()
        df[EVENT_TIMESTAMP] = pd.to_datetime(df[EVENT_TIMESTAMP], utc=True)
        return df.sort_values("label").reset_index(drop=True)

    spark, duck = normal(got["spark"]), normal(got["duckdb"])
    assert list(spark.columns) == list(duck.columns)
    assert spark.notna().sum().sum() > 0.9 * spark.size
    pd.testing.assert_frame_equal(spark, duck, check_dtype=False)


def test_bad_data_is_the_same_one_line_error_on_spark(tmp_path, raw, catalogue, spark_engine):
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    for name, df in raw.items():
        df.to_parquet(raw_dir / f"{name}.parquet", index=False)
    bad = raw["interactions"].copy()
    bad.loc[123, "count"] = 0
    bad.to_parquet(raw_dir / "interactions.parquet", index=False)
    with pytest.raises(SchemaError, match=r"interactions.parquet: column 'count', row 123: value 0 is below"):
        build_partitioned(raw_dir, tmp_path / "features", catalogue, load_segments(), BuildOptions(parts=2),
                          engine=spark_engine, progress=lambda _: None)
    assert not list((tmp_path / "features").glob("*.parquet"))


def test_an_unreachable_master_is_one_line_naming_it(tmp_path, raw):
    from tests.servers import run_cli
    from nextbest.cli.server import free_port

    for name, df in raw.items():
        (tmp_path / "raw").mkdir(exist_ok=True)
        df.to_parquet(tmp_path / "raw" / f"{name}.parquet", index=False)
    master = f"spark://127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = run_cli("features", "build", "--engine", "spark", "--spark-master", master, workdir=tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: Spark master {master} cannot be reached (Connection refused)"], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - started < 60
