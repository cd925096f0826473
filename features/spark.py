"""The feature build on Apache Spark: the same split and the same parts, run as Spark tasks.

The features are functions of one customer's history written once, in `build.py`; Spark runs
them, part by part, on its executors (`SparkContext.parallelize(...).map`), as the local engine
runs them in its process pool. Both engines therefore write the same tables, row for row, and a
bank that outgrows one machine spreads its parts over a cluster. The executors need this package
installed and the work directory (`features/.build-*`) on a file system they all see.

Requires `pyspark` (the `spark` extra) and Java 17 or newer.
"""

from __future__ import annotations

import os
import socket
import sys
from functools import partial
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from nextbest.config import Catalogue, SegmentsConfig
from nextbest.features.partitioned import BuildError, build_part
from nextbest.features.split import RawSummary

CONNECT_TIMEOUT_S = 5.0
LOG_CONFIG = Path(__file__).with_name("spark_log4j2.properties")  # errors only, on stderr


class SparkUnavailable(ValueError):
    """Spark cannot be started or reached (a one-line reason)."""


def check_master(master: str) -> None:
    """Fails fast, naming the master, when a `spark://host:port` master does not accept connections."""
    if not master.startswith("spark://"):
        return
    for address in master[len("spark://"):].split(","):  # standby masters: spark://a:7077,b:7077
        url = urlparse(f"spark://{address}")
        host, port = url.hostname, url.port or 7077
        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
            return
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
    raise SparkUnavailable(f"Spark master {master} cannot be reached ({reason})")


def require_pyspark(what: str) -> None:
    """Raises SparkUnavailable, saying what to install, when pyspark is missing."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise SparkUnavailable(f"{what} needs pyspark: pip install 'nextbest[spark]' (and Java 17 or newer)") from None


class SparkEngine:
    """Runs the split units and the parts as Spark tasks, one task per unit or part."""

    name = "spark"

    def __init__(self, master: str | None = None, workers: int | None = None, driver_memory: str = "2g"):
        self.workers = workers or min(2, os.cpu_count() or 1)
        self.master = master or f"local[{self.workers}]"
        self.driver_memory = driver_memory
        self.spark = None

    def start(self) -> None:
        if self.spark is not None:
            return
        require_pyspark("--engine spark")
        from pyspark.sql import SparkSession

        check_master(self.master)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # executors run this interpreter
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        if self.master.startswith("local"):
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = (SparkSession.builder.master(self.master).appName("nextbest features build")
                   .config("spark.driver.memory", self.driver_memory)
                   .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
                   .config("spark.sql.session.timeZone", "UTC")
                   .config("spark.python.worker.reuse", "true")
                   .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{LOG_CONFIG}"))
        try:
            self.spark = builder.getOrCreate()
        except Exception as exc:  # py4j and JVM errors: one line, naming the master
            _stop_dead_context()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SparkUnavailable(f"Spark master {self.master} could not start a session: {first}") from None
        self.spark.sparkContext.setLogLevel("ERROR")

    def stop(self) -> None:
        if self.spark is not None:
            self.spark.stop()
            self.spark = None

    def map(self, fn: Callable, items: list) -> list:
        """fn over items as Spark tasks, one per item; results in the items' order."""
        if not items:
            return []
        sc = self.spark.sparkContext
        try:
            return sc.parallelize(items, len(items)).map(fn).collect()
        except Exception as exc:  # py4j: a task failed after Spark's retries
            raise BuildError(f"Spark ({self.master}) failed a task: {_last_python_error(exc)}") from None

    def build(self, work: Path, summary: RawSummary, catalogue: Catalogue, segments: SegmentsConfig,
              progress: Callable[[int, int], None]) -> list[dict]:
        task = partial(build_part, work / "parts", work / "out", schemas=summary.schemas, months=summary.months,
                       catalogue=catalogue, segments=segments)
        out = self.map(task, list(range(summary.parts)))
        progress(summary.parts, summary.parts)
        return out


def _last_python_error(exc: Exception) -> str:
    """The Python exception line inside a Spark task failure's text, else its first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if line.split(":")[0].endswith(("Error", "Exception")) and " " not in
              line.split(":")[0]]
    return (errors or lines or [type(exc).__name__])[-1][:300]


def _stop_dead_context() -> None:
    """A failed start leaves a stopped SparkContext registered; clear it so a later session can start."""
    try:
        from pyspark import SparkContext

        if SparkContext._active_spark_context is not None:
            SparkContext._active_spark_context.stop()
    except Exception:  # nothing more to clean
        pass
