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
    from nextbest.features import partitioned

    monkeypatch.setattr(partitioned, "SPLIT_UNIT_ROWS", 8000)
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
