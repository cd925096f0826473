"""Feature building in bounded memory: the bank split by customer, each part built alone.

Every feature is a function of one customer's own history, so the raw tables are split by a
stable hash of `customer_id` into parts, each part is built by the same functions as a whole bank
(`build.py`), and the parts' tables are joined into one file per view. The one exception, the
value tier, ranks clients within a month: each part reports its margins' distribution per month,
the cut is taken over the whole bank, and the tier is set while the parts are joined. Peak memory
follows the size of a part, not of the bank; the number of parts follows from a memory limit.

Three steps, each restartable from the files of the one before:

1. `split` (`split.py`): the raw tables are read in chunks, validated (errors name the file's own
   row) and written into `parts/<i>/<table>/<unit>.parquet`; a unique key with the customer in it is
   checked within each part, any other over the whole file.
2. `build_part`: one part -> `out/<i>/<view>.parquet`, plus its margins' distribution.
3. `join_parts`: the parts' tables -> `features/<view>.parquet`, all four replaced together.

An engine runs step 2 on its own workers: a local process pool (`LocalEngine`) or Spark
(`features/spark.py`); steps 1 and 3 are shared.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nextbest.config import Catalogue, SegmentsConfig
from nextbest.constants import EVENT_TIMESTAMP, FEATURE_PARTS_KEY, SNAPSHOT_DATE
from nextbest.features.build import SEGMENTS_VIEW, VIEWS, build_feature_tables
from nextbest.features.segments import apply_tiers, margin_counts, tier_cuts
from nextbest.io import RAW_TABLES, StreamingParquetWriter
from nextbest.features.split import (CHUNK_ROWS, SPILL_COMPRESSION, RawSummary, customer_keyed, open_raw,
                                     raise_first_repeat, split)
from nextbest.schema import SCHEMAS

log = logging.getLogger("nextbest.features")

# Peak bytes a part needs while it is built, per byte of its raw tables in pandas and per
# customer-month of output (measured on the synthetic bank: 2.7 GB for 20,000 customers x 18
# months, 0.92 GB of raw tables in pandas).
RAW_FACTOR = 1.6
BYTES_PER_CUSTOMER_MONTH = 3_500
MIN_PART_BYTES = 32 * 2**20
# What the process that splits and joins keeps while the workers build.
PARENT_RESERVE = 512 * 2**20
# What each worker process holds before it reads a part (the modules it runs).
WORKER_BASE = 300 * 2**20
DEFAULT_MEMORY_FRACTION = 0.25
DEFAULT_MEMORY_CAP = 4 * 2**30


def default_memory_limit() -> int:
    """A quarter of the machine's memory, at most 4 GiB."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(min(DEFAULT_MEMORY_CAP, total * DEFAULT_MEMORY_FRACTION))


def parse_bytes(text: str) -> int:
    """"6GB", "512MiB", "2g", "1000000" -> bytes."""
    units = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
             "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}
    s = text.strip().lower().replace(" ", "")
    number = s.rstrip("kmgtib")
    unit = s[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or not value > 0:
        raise ValueError(f"memory limit {text!r}: expected a size such as 6GB, 512MiB or 2g")
    return int(value * units[unit])


def release_memory() -> None:
    """Hands memory freed by pandas and Arrow back to the system, so that a long build's resident size
    follows what it holds, not what it once held."""
    import ctypes
    import gc

    gc.collect()
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def plan_parts(raw_dir: Path, memory_limit: int, workers: int) -> int:
    """How many parts keep each worker's build under its share of `memory_limit`.

    The raw tables' size in memory is sampled from their first rows; the number of snapshots is
    read from the holdings' snapshot dates.
    """
    raw_bytes = 0.0
    customers = 1
    months = 1
    for name in RAW_TABLES:
        pf = open_raw(raw_dir, name)
        if pf is None or pf.metadata.num_rows == 0:
            continue
        rows = pf.metadata.num_rows
        sample = next(pf.iter_batches(batch_size=min(rows, 20_000)))
        per_row = pa.Table.from_batches([sample]).to_pandas().memory_usage(deep=True).sum() / max(sample.num_rows, 1)
        raw_bytes += per_row * rows
        if name == "customers":
            customers = rows
        if name == "holdings" and SNAPSHOT_DATE in pf.schema_arrow.names:  # else validation names it
            seen: set = set()
            for batch in pf.iter_batches(batch_size=CHUNK_ROWS, columns=[SNAPSHOT_DATE]):
                seen.update(pc.unique(batch.column(0)).to_pylist())
            months = max(len(seen), 1)
    need = RAW_FACTOR * raw_bytes + BYTES_PER_CUSTOMER_MONTH * customers * months
    workers = max(workers, 1)
    per_worker = max((memory_limit - PARENT_RESERVE - workers * WORKER_BASE) / workers, MIN_PART_BYTES)
    return max(1, math.ceil(need / per_worker))


def _read_part(folder: Path, schema: pa.Schema) -> pd.DataFrame:
    """One table of one part: its split units' files in file order, or none (an empty table)."""
    files = sorted(folder.glob("*.parquet")) if folder.exists() else []
    table = pa.concat_tables([pq.read_table(f) for f in files]) if files else schema.empty_table()
    return table.to_pandas()


def build_part(parts_dir: Path, out_dir: Path, part: int, schemas: dict[str, pa.Schema], months: pd.DatetimeIndex,
               catalogue: Catalogue, segments: SegmentsConfig) -> dict:
    """Builds one part's feature tables into `out_dir/<part>/<view>.parquet`; returns its margins' distribution."""
    raw = {name: _read_part(parts_dir / str(part) / name, schema) for name, schema in schemas.items()}
    for name, df in raw.items():
        keys = list(SCHEMAS[name].unique)
        if customer_keyed(name) and len(df):
            dup = df.duplicated(keys).to_numpy()
            if dup.any():  # the driver finds its row in the file
                return {"duplicate": (name, tuple(df.iloc[int(np.argmax(dup))][keys]))}
    built = build_feature_tables(raw, catalogue, segments, months=months, value_tiers=False)
    del raw
    seg = built[SEGMENTS_VIEW]
    counts = margin_counts(seg["yearly_margin"].to_numpy(), seg[EVENT_TIMESTAMP])
    target = out_dir / str(part)
    target.mkdir(parents=True, exist_ok=True)
    for view in list(built):
        pq.write_table(pa.Table.from_pandas(built.pop(view), preserve_index=False), target / f"{view}.parquet",
                       compression=SPILL_COMPRESSION)
    release_memory()
    return {"counts": counts}


def join_parts(out_dir: Path, parts: int, features_dir: Path, top_share: float, counts: list[dict]) -> dict[str, Path]:
    """Joins the parts' tables into `features/<view>.parquet`, setting each client's value tier from the
    bank-wide cut; the four files are replaced together at the end. Each file records its parts' row
    counts in its footer (`nextbest.parts`), so that a training set can be joined part by part."""
    cuts = tier_cuts(counts, top_share)
    writer = StreamingParquetWriter(features_dir)
    rows: dict[str, list[int]] = {}
    try:
        for view in VIEWS:
            schema = None
            rows[view] = []
            for i in range(parts):
                table = pq.read_table(out_dir / str(i) / f"{view}.parquet")
                if view == SEGMENTS_VIEW:
                    tiers = apply_tiers(table.column("yearly_margin").to_numpy(),
                                        table.column(EVENT_TIMESTAMP).to_pandas(), cuts)
                    table = table.append_column("value_tier", pa.array(tiers, type=pa.string()))
                schema = schema or _reference_schema(out_dir, parts, view, table)
                writer.write(view, table.cast(schema) if table.schema != schema else table)
                rows[view].append(table.num_rows)
        footers = {view: {FEATURE_PARTS_KEY: json.dumps(n)} for view, n in rows.items()}
        return {Path(p).stem: p for p in writer.commit(footers)}
    except BaseException:
        writer.abort()
        raise


def _reference_schema(out_dir: Path, parts: int, view: str, first: pa.Table) -> pa.Schema:
    """The view's schema with a concrete type for columns that are all null in some parts."""
    if not any(pa.types.is_null(f.type) for f in first.schema):
        return first.schema
    for i in range(parts):
        s = pq.read_schema(out_dir / str(i) / f"{view}.parquet")
        if not any(pa.types.is_null(f.type) for f in s):
            return s if view != SEGMENTS_VIEW else s.append(pa.field("value_tier", pa.string()))
    return first.schema


class BuildError(ValueError):
    """A worker building parts died or failed (one line, with what to change)."""


@dataclass(frozen=True)
class BuildOptions:
    """How the build runs. `memory_limit` in bytes bounds the whole build (all workers together)."""

    memory_limit: int | None = None
    parts: int | None = None
    workers: int | None = None
    keep_work: bool = False


def _pid(_: int) -> int:
    return os.getpid()


class LocalEngine:
    """Builds the parts in a pool of local processes (one part per process at a time).

    The pool starts before the split, while the parent process is small: forked workers then
    share little of the parent's memory."""

    name = "local"

    def __init__(self, workers: int):
        self.workers = workers
        self._pool = None

    def start(self) -> None:
        if self.workers > 1 and self._pool is None:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("fork"))
            # Fork the workers now: a pool starts its processes with its first task.
            list(self._pool.map(_pid, range(self.workers)))

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def map(self, fn: Callable, items: list) -> list:
        """fn over items, in the pool when there is one; results in the items' order."""
        if self._pool is None or len(items) == 1:
            return [fn(x) for x in items]
        return list(self._pool.map(fn, items))

    def build(self, work: Path, summary: RawSummary, catalogue: Catalogue, segments: SegmentsConfig,
              progress: Callable[[int, int], None]) -> list[dict]:
        task = partial(build_part, work / "parts", work / "out", schemas=summary.schemas, months=summary.months,
                       catalogue=catalogue, segments=segments)
        if self._pool is None or summary.parts == 1:
            out = []
            for i in range(summary.parts):
                out.append(task(i))
                progress(i + 1, summary.parts)
            return out
        out = []
        for i, result in enumerate(self._pool.map(task, range(summary.parts))):
            out.append(result)
            progress(i + 1, summary.parts)
        return out


def build_partitioned(raw_dir: Path, features_dir: Path, catalogue: Catalogue, segments: SegmentsConfig,
                      options: BuildOptions = BuildOptions(), engine=None,
                      progress: Callable[[str], None] = log.info) -> dict[str, Path]:
    """Raw tables -> `features/<view>.parquet` in bounded memory (see the module's docstring)."""
    memory_limit = options.memory_limit or default_memory_limit()
    workers = options.workers or min(2, os.cpu_count() or 1)
    engine = engine or LocalEngine(workers)
    parts = options.parts or plan_parts(raw_dir, memory_limit, getattr(engine, "workers", workers))
    work = features_dir / f".build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        started = time.perf_counter()
        engine.start()
        progress(f"splitting the raw tables into {parts} part(s) by customer")
        summary = split(raw_dir, catalogue.ids, parts, work / "parts", run=engine.map)
        release_memory()
        split_s = time.perf_counter() - started
        progress(f"building {parts} part(s) on {engine.name} ({len(summary.months)} snapshots, "
                 f"{summary.rows.get('customers', 0):,} customers; split in {split_s:.1f} s)")
        try:
            counts = engine.build(work, summary, catalogue, segments,
                                  lambda done, total: progress(f"built part {done} of {total}") if total > 1 else None)
        except BrokenProcessPool:
            raise BuildError(f"a worker building the {parts} part(s) died, most often killed by the system for "
                             "memory: give the build less to hold at once (a lower --memory-limit makes more, "
                             "smaller parts; or --workers 1)") from None
        repeats = [r["duplicate"] for r in counts if "duplicate" in r]
        for name in sorted({t for t, _ in repeats}):
            raise_first_repeat(raw_dir / f"{name}.parquet", name,
                                repeated_keys=[key for t, key in repeats if t == name])
        build_s = time.perf_counter() - started - split_s
        progress(f"joining the parts (built in {build_s:.1f} s)")
        out = join_parts(work / "out", parts, features_dir, segments.value_tier.top_share,
                         [r["counts"] for r in counts])
        progress(f"joined in {time.perf_counter() - started - split_s - build_s:.1f} s")
        return out
    finally:
        engine.stop()
        if not options.keep_work:
            shutil.rmtree(work, ignore_errors=True)
