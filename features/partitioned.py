"""Feature building in bounded memory: the bank split by customer, each part built alone.

Every feature is a function of one customer's own history, so the raw tables are split by a
stable hash of `customer_id` into parts, each part is built by the same functions as a whole bank
(`build.py`), and the parts' tables are joined into one file per view. The one exception, the
value tier, ranks clients within a month: each part reports its margins' distribution per month,
the cut is taken over the whole bank, and the tier is set while the parts are joined. Peak memory
follows the size of a part, not of the bank; the number of parts follows from a memory limit.

Three steps, each restartable from the files of the one before:

1. `split`: the raw tables are read in chunks, validated (errors name the file's own row) and
   written into `parts/<i>/<table>/<unit>.parquet`; a unique key with the customer in it is checked
   within each part, any other over the whole file.
2. `build_part`: one part -> `out/<i>/<view>.parquet`, plus its margins' distribution.
3. `join_parts`: the parts' tables -> `features/<view>.parquet`, all four replaced together.

An engine runs step 2 on its own workers: a local process pool (`LocalEngine`) or Spark
(`features/spark.py`); steps 1 and 3 are shared.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nextbest.config import Catalogue, SegmentsConfig
from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP, SNAPSHOT_DATE
from nextbest.features.build import SEGMENTS_VIEW, VIEWS, build_feature_tables, snapshot_months
from nextbest.features.segments import apply_tiers, margin_counts, tier_cuts
from nextbest.io import RAW_TABLES, StreamingParquetWriter
from nextbest.schema import SCHEMAS, SchemaError, duplicate_key, validate_arrow

log = logging.getLogger("nextbest.features")

CHUNK_ROWS = 500_000
# Rows of raw table one split task reads (whole row groups).
SPLIT_UNIT_ROWS = 4_000_000
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
# Work files are read once, soon after: fast to write matters more than small.
SPILL_COMPRESSION = "lz4"
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


def partition_of(customer_ids: pd.Series | np.ndarray, parts: int) -> np.ndarray:
    """The part of each customer: a stable 64-bit hash of the id as text (the same in every run and process)."""
    if parts == 1:
        return np.zeros(len(customer_ids), dtype=np.int64)
    values = np.asarray(customer_ids, dtype=object).astype(str).astype(object)
    return (pd.util.hash_array(values, categorize=True) % np.uint64(parts)).astype(np.int64)


def _part_ids(ids: pa.ChunkedArray, parts: int) -> np.ndarray:
    """`partition_of` for an Arrow column: each distinct id is hashed once."""
    if parts == 1:
        return np.zeros(len(ids), dtype=np.int64)
    encoded = pc.dictionary_encode(ids).combine_chunks()
    distinct = partition_of(encoded.dictionary.to_numpy(zero_copy_only=False), parts)
    return distinct[encoded.indices.to_numpy(zero_copy_only=False)]


@dataclass
class RawSummary:
    """What the split learnt about the bank."""

    months: pd.DatetimeIndex
    parts: int
    rows: dict[str, int] = field(default_factory=dict)
    schemas: dict[str, pa.Schema] = field(default_factory=dict)


def _open(raw_dir: Path, name: str) -> pq.ParquetFile | None:
    path = raw_dir / f"{name}.parquet"
    if not path.exists():
        if name == "offers":
            return None
        raise SchemaError(f"{path}: file not found (run `nextbest generate` or `nextbest ingest` first)")
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise SchemaError(f"{path}: not a readable parquet file ({exc})") from None


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
        pf = _open(raw_dir, name)
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


@dataclass(frozen=True)
class SplitUnit:
    """Consecutive row groups of one raw table, split by one task."""

    table: str
    path: str
    row_groups: tuple[int, ...]
    first_row: int  # the file's row of the unit's first row
    index: int  # the unit's place in its table: parts keep the file's order


def split_units(raw_dir: Path, unit_rows: int | None = None) -> tuple[list[SplitUnit], dict[str, pa.Schema]]:
    """The raw tables as units of about `unit_rows` rows (whole row groups), and each table's schema.

    Raises:
        SchemaError: a required table is missing or is not a parquet file.
    """
    unit_rows = unit_rows or SPLIT_UNIT_ROWS
    units, schemas = [], {}
    for name in RAW_TABLES:
        pf = _open(raw_dir, name)
        if pf is None:
            continue
        schemas[name] = pf.schema_arrow
        groups: list[int] = []
        first = rows = 0
        for g in range(pf.metadata.num_row_groups):
            groups.append(g)
            rows += pf.metadata.row_group(g).num_rows
            if rows - first >= unit_rows:
                units.append(SplitUnit(name, str(raw_dir / f"{name}.parquet"), tuple(groups), first,
                                       sum(u.table == name for u in units)))
                groups, first = [], rows
        if groups or not any(u.table == name for u in units):
            units.append(SplitUnit(name, str(raw_dir / f"{name}.parquet"), tuple(groups), first,
                                   sum(u.table == name for u in units)))
    return units, schemas


def split_unit(unit: SplitUnit, products: list[str], parts: int, parts_dir: Path) -> dict:
    """Validates one unit chunk by chunk and writes each customer's rows into
    `parts_dir/<part>/<table>/<unit>.parquet`. Timestamps are written naive UTC in nanoseconds, as
    the build reads them.

    Returns `{"rows": n, "months": [snapshot dates as ns]}`, or `{"error": message}` for data that breaks
    the schema or cannot be read (the message names file, column and the file's row): an error is data,
    so that every engine reports it the same way. Errors writing the work files are raised as they are.
    """
    path = Path(unit.path)
    writers: dict[int, pq.ParquetWriter] = {}
    months: set[int] = set()
    offset = unit.first_row
    _allow_open_files(parts + 64)
    try:
        for table in _read_unit(unit, path):
            validate_arrow(table, unit.table, source=path, products=products, row_offset=offset)
            table = _naive_ns(table)
            offset += len(table)
            if unit.table == "holdings":
                months.update(pc.unique(table.column(SNAPSHOT_DATE)).cast(pa.int64()).to_pylist())
            part = _part_ids(table.column(CUSTOMER_ID), parts)
            order = np.argsort(part, kind="stable")
            bounds = np.searchsorted(part[order], np.arange(parts + 1))
            table = table.take(pa.array(order))
            for i in range(parts):
                if bounds[i + 1] > bounds[i]:
                    if i not in writers:
                        target = parts_dir / str(i) / unit.table / f"{unit.index:05d}.parquet"
                        target.parent.mkdir(parents=True, exist_ok=True)
                        writers[i] = pq.ParquetWriter(target, table.schema, compression=SPILL_COMPRESSION)
                    writers[i].write_table(table.slice(bounds[i], bounds[i + 1] - bounds[i]))
    except SchemaError as exc:
        return {"error": str(exc)}
    finally:
        for w in writers.values():
            w.close()
    return {"rows": offset - unit.first_row, "months": sorted(months)}


def _read_unit(unit: SplitUnit, path: Path):
    """The unit's chunks as Arrow tables (the schema checked first, even for an empty file); a file that
    cannot be read is a SchemaError naming it."""
    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
        yield schema.empty_table()  # columns and kinds, even for an empty file
        batches = pf.iter_batches(batch_size=CHUNK_ROWS, row_groups=list(unit.row_groups)) if unit.row_groups else ()
        for batch in batches:
            yield pa.Table.from_batches([batch], schema=schema)
    except (OSError, pa.ArrowInvalid) as exc:
        raise SchemaError(f"{path}: not a readable parquet file ({exc})") from None


def _naive_ns(table: pa.Table) -> pa.Table:
    """Timestamp columns as naive UTC nanoseconds (validation has checked they fit). pandas' own metadata
    is dropped when a column changes type: it would restore the old type when read back."""
    changed = False
    for i, field_ in enumerate(table.schema):
        if pa.types.is_timestamp(field_.type) and (field_.type.tz is not None or field_.type.unit != "ns"):
            table = table.set_column(i, field_.name, pc.cast(table.column(i), pa.timestamp("ns"), safe=False))
            changed = True
    return table.replace_schema_metadata(None) if changed else table


def _allow_open_files(needed: int) -> None:
    """A split task keeps one file open per part it writes: raise this process's limit to the hard
    limit if needed, or say what to change."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed <= soft:
        return
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise OSError(f"building in {needed - 64} parts needs {needed} open files per task, over this system's "
                      f"limit of {hard}: give the build more memory (--memory-limit) or fewer parts (--parts)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else needed, hard))


def split(raw_dir: Path, products: list[str], parts: int, parts_dir: Path, run: Callable | None = None) -> RawSummary:
    """Validates the raw tables and writes each customer's rows into their part; `run(fn, items)` runs the
    units (in order, by default here).

    Raises:
        SchemaError: a table is missing or breaks the schema (the message names file, column and the
            file's row; of several bad units, the first in file order).
    """
    units, schemas = split_units(raw_dir)
    run = run or (lambda fn, items: [fn(x) for x in items])
    results = run(partial(split_unit, products=products, parts=parts, parts_dir=parts_dir), units)
    for result in results:
        if "error" in result:
            raise SchemaError(result["error"])
    for name in schemas:  # keys with the customer in them are checked within each part
        if not customer_keyed(name):
            check_unique(raw_dir / f"{name}.parquet", name)
    months = sorted({m for r, u in zip(results, units) if u.table == "holdings" for m in r["months"]})
    if not months:
        raise SchemaError(f"{raw_dir / 'holdings.parquet'}: no monthly snapshots, so there are no customer-month "
                          "features to build (contact-level data such as uci-bank-marketing feeds `nextbest "
                          "campaign` instead)")
    rows = {name: sum(r["rows"] for r, u in zip(results, units) if u.table == name) for name in schemas}
    written = {name: _naive_ns(schema.empty_table()).schema for name, schema in schemas.items()}
    return RawSummary(snapshot_months(pd.to_datetime(months)), parts, rows, written)


def customer_keyed(table: str) -> bool:
    """Whether the table's unique key includes the customer: every repeat of a key is then in one part."""
    return CUSTOMER_ID in SCHEMAS[table].unique


def check_unique(path: Path, table: str, source: str | Path | None = None) -> None:
    """Raises SchemaError naming the first row (in file order) whose unique key repeats an earlier row's
    (and `source`, where the rows came from, instead of `path`).

    Reads the key columns in chunks and keeps one 64-bit hash per row (8 bytes a row); a repeated hash
    is confirmed on the key's values before it is reported.
    """
    keys = list(SCHEMAS[table].unique)
    if not keys:
        return
    pf = pq.ParquetFile(path)
    hashes = [pd.util.hash_pandas_object(b.to_pandas(), index=False).to_numpy()
              for b in pf.iter_batches(batch_size=CHUNK_ROWS, columns=keys)]
    if not hashes:
        return
    values, counts = np.unique(np.concatenate(hashes), return_counts=True)
    repeated = values[counts > 1]
    if len(repeated):
        _raise_first_repeat(path, table, repeated_hashes=repeated, source=source)


def _raise_first_repeat(path: Path, table: str, source: str | Path | None = None, repeated_hashes=None,
                        repeated_keys: list[tuple] | None = None) -> None:
    """Scans the file in order for the first row whose key (among the candidates) was seen before, and
    raises the duplicate-key error for it."""
    keys = list(SCHEMAS[table].unique)
    seen: set = set()
    offset = 0
    candidates = set(repeated_keys or [])
    for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS, columns=keys):
        df = batch.to_pandas()
        if repeated_hashes is not None:
            pick = np.isin(pd.util.hash_pandas_object(df, index=False).to_numpy(), repeated_hashes)
        else:
            pick = pd.MultiIndex.from_frame(df).isin(list(candidates))
        for i in np.flatnonzero(pick):
            key = tuple(df.iloc[i])
            if key in seen:
                raise duplicate_key(source or path, table, offset + int(i), _row(path, offset + int(i)))
            seen.add(key)
        offset += len(df)


def _row(path: Path, row: int) -> pd.Series:
    """One row of a parquet file, read from its row group only."""
    pf = pq.ParquetFile(path)
    start = 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if row < start + n:
            return pf.read_row_group(g).slice(row - start, 1).to_pandas().iloc[0]
        start += n
    raise IndexError(row)


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
    bank-wide cut; the four files are replaced together at the end."""
    cuts = tier_cuts(counts, top_share)
    writer = StreamingParquetWriter(features_dir)
    try:
        for view in VIEWS:
            schema = None
            for i in range(parts):
                table = pq.read_table(out_dir / str(i) / f"{view}.parquet")
                if view == SEGMENTS_VIEW:
                    tiers = apply_tiers(table.column("yearly_margin").to_numpy(),
                                        table.column(EVENT_TIMESTAMP).to_pandas(), cuts)
                    table = table.append_column("value_tier", pa.array(tiers, type=pa.string()))
                schema = schema or _reference_schema(out_dir, parts, view, table)
                writer.write(view, table.cast(schema) if table.schema != schema else table)
        return {Path(p).stem: p for p in writer.commit()}
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
            _raise_first_repeat(raw_dir / f"{name}.parquet", name,
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
