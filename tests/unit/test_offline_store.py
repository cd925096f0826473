"""The offline-store choice: recorded in feast/feature_store.yaml, kept on re-apply, errors named."""

from __future__ import annotations

import pytest
import yaml

from nextbest.feature_repo.offline import (DEFAULT_SPARK_MASTER, OfflineStoreChoice, current_offline_store,
                                           resolve_offline_store, spark_source, with_offline_store)
from nextbest.feature_repo.store import write_store_config
from nextbest.settings import Paths


def test_the_choice_is_written_read_back_and_kept(tmp_path):
    paths = Paths.from_workdir(tmp_path).ensure()
    write_store_config(paths)
    assert current_offline_store(paths) == OfflineStoreChoice("duckdb")
    spark = OfflineStoreChoice("spark", "spark://h:7077")
    write_store_config(paths, offline=spark)
    config = yaml.safe_load((paths.feast / "feature_store.yaml").read_text())
    assert config["offline_store"]["type"] == "spark"
    assert config["offline_store"]["spark_conf"]["spark.master"] == "spark://h:7077"
    assert config["offline_store"]["spark_conf"]["spark.sql.legacy.parquet.nanosAsLong"] == "true"
    assert config["online_store"]["type"].endswith("RowSqliteOnlineStore")  # the online store is untouched
    assert current_offline_store(paths) == spark
    write_store_config(paths)  # re-applying without a choice keeps the current one
    assert current_offline_store(paths) == spark


def test_flags_else_the_current_store_else_duckdb():
    spark = OfflineStoreChoice("spark", "spark://h:7077")
    assert resolve_offline_store(None, None, None) == OfflineStoreChoice("duckdb")
    assert resolve_offline_store(None, None, spark) == spark
    assert resolve_offline_store("spark", None, None) == OfflineStoreChoice("spark", DEFAULT_SPARK_MASTER)
    assert resolve_offline_store("spark", None, spark) == spark
    assert resolve_offline_store(None, "local[4]", spark) == OfflineStoreChoice("spark", "local[4]")
    assert resolve_offline_store("duckdb", None, spark) == OfflineStoreChoice("duckdb")
    with pytest.raises(ValueError, match=r"unknown offline store 'bigquery'; choose one of: duckdb, spark"):
        resolve_offline_store("bigquery", None, None)
    with pytest.raises(ValueError, match=r"--spark-master 'local\[2\]' is for the Spark offline store"):
        resolve_offline_store("duckdb", "local[2]", None)


def test_the_offline_section_is_replaced_whole():
    text = "project: p\noffline_store:\n  type: duckdb   # note\nentity_key_serialization_version: 3\n"
    out = yaml.safe_load(with_offline_store(text, OfflineStoreChoice("spark", "local[2]")))
    assert out["project"] == "p" and out["entity_key_serialization_version"] == 3
    assert out["offline_store"]["type"] == "spark"


def test_a_spark_source_reads_the_file_once_with_its_timestamps_as_spark_timestamps(tmp_path):
    source = spark_source(tmp_path, "customer_profile", ["customer_id", "event_timestamp", "age", "income"])
    assert source.query.startswith("SELECT customer_id, timestamp_micros(event_timestamp div 1000) AS event_timestamp, "
                                   "age, income FROM parquet.`")
    assert str(tmp_path / "customer_profile.parquet") in source.query
    with pytest.raises(ValueError, match=r"feature column 'a b' cannot be read by the Spark offline store"):
        spark_source(tmp_path, "v", ["customer_id", "event_timestamp", "a b"])
