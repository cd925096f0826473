"""The offline store that serves a work directory's training sets: Feast's DuckDB store over the
feature files (the default), or Feast's Spark store, which runs the point-in-time join as Spark SQL
over the same files, in local mode or on a cluster (`--spark-master`).

The feature files keep their timestamps in nanoseconds, which Spark's parquet reader does not
take as timestamps: the Spark sources read them as numbers (`spark.sql.legacy.parquet.nanosAsLong`)
and turn them into Spark timestamps in their query, so both stores read one copy of the files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP
from nextbest.settings import Paths

DUCKDB, SPARK = "duckdb", "spark"
OFFLINE_STORES = (DUCKDB, SPARK)
DEFAULT_SPARK_MASTER = "local[2]"
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BLOCK = re.compile(r"^offline_store:.*\n(?:[ \t]+.*\n?)*", re.MULTILINE)


@dataclass(frozen=True)
class OfflineStoreChoice:
    """`duckdb` (Feast's DuckDB store, the default) or `spark` (Feast's Spark store at `spark_master`)."""

    kind: str = DUCKDB
    spark_master: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in OFFLINE_STORES:
            raise ValueError(f"unknown offline store {self.kind!r}; choose one of: {', '.join(OFFLINE_STORES)}")
        if self.spark_master is not None and self.kind != SPARK:
            raise ValueError(f"--spark-master {self.spark_master!r} is for the Spark offline store; add "
                             "--offline-store spark")

    def describe(self) -> str:
        return f"Spark offline store at {self.spark_master}" if self.kind == SPARK else "DuckDB offline store"

    def yaml_block(self) -> str:
        """The `offline_store:` section of `feature_store.yaml`."""
        from nextbest.features.spark import LOG_CONFIG  # Spark's logging: errors only, on stderr

        if self.kind == DUCKDB:
            return ("offline_store:\n"
                    "  type: duckdb   # Feast's DuckDB offline store: point-in-time joins ~12x faster than dask here\n")
        return ("offline_store:\n  type: spark   # Feast's Spark offline store over features/*.parquet\n"
                "  spark_conf:\n"
                f"    spark.master: \"{self.spark_master}\"\n"
                "    spark.sql.session.timeZone: UTC\n"
                "    spark.sql.legacy.parquet.nanosAsLong: \"true\"\n"
                "    spark.ui.enabled: \"false\"\n"
                "    spark.sql.shuffle.partitions: \"8\"\n"
                f"    spark.driver.extraJavaOptions: \"-Dlog4j2.configurationFile=file:{LOG_CONFIG}\"\n")


def resolve_offline_store(offline_store: str | None, spark_master: str | None,
                          current: OfflineStoreChoice | None) -> OfflineStoreChoice:
    """The flags, else the work directory's current choice (re-applying never switches stores), else DuckDB."""
    kind = (offline_store or "").strip().lower() or None
    if kind is None and spark_master is None:
        return current or OfflineStoreChoice()
    kind = kind or (current.kind if current else DUCKDB)
    if kind == SPARK:
        master = spark_master or (current.spark_master if current and current.kind == SPARK else None)
        return OfflineStoreChoice(SPARK, master or DEFAULT_SPARK_MASTER)
    return OfflineStoreChoice(kind, spark_master)


def with_offline_store(text: str, choice: OfflineStoreChoice) -> str:
    """`feature_store.yaml` text with its `offline_store:` section replaced by the choice's."""
    return _BLOCK.sub(lambda _: choice.yaml_block(), text, count=1)


def current_offline_store(paths: Paths) -> OfflineStoreChoice | None:
    """The offline store the work directory's `feast/feature_store.yaml` names (None when there is none yet)."""
    import yaml

    config = paths.feast / "feature_store.yaml"
    if not config.exists():
        return None
    offline = (yaml.safe_load(config.read_text()) or {}).get("offline_store") or {}
    if offline.get("type") == SPARK:
        return OfflineStoreChoice(SPARK, str((offline.get("spark_conf") or {}).get("spark.master",
                                                                                   DEFAULT_SPARK_MASTER)))
    return OfflineStoreChoice(DUCKDB) if offline.get("type") == DUCKDB else None


def spark_source(features_dir: Path, view: str, columns: list[str]):
    """A Feast SparkSource over `features/<view>.parquet`: the nanosecond timestamps, read as numbers,
    become Spark timestamps (microseconds; the files hold month ends, so nothing is lost)."""
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

    path = str((features_dir / f"{view}.parquet").resolve()).replace("`", "``")
    # Feast's Spark store reads backquoted names in a SELECT as patterns: plain names stay bare.
    names = [_name(c) for c in columns if c not in (CUSTOMER_ID, EVENT_TIMESTAMP)]
    query = (f"SELECT {CUSTOMER_ID}, timestamp_micros({EVENT_TIMESTAMP} div 1000) AS {EVENT_TIMESTAMP}"
             f"{''.join(', ' + n for n in names)} FROM parquet.`{path}`")
    return SparkSource(name=f"{view}_source", query=query, timestamp_field=EVENT_TIMESTAMP)


def _name(column: str) -> str:
    if _PLAIN.match(column):
        return column
    raise ValueError(f"feature column {column!r} cannot be read by the Spark offline store: use letters, digits "
                     "and underscores")
