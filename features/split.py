"""The split of a bank's raw tables by customer: each table read in chunks of whole row groups,
validated on Arrow (errors name the file's own row), and each customer's rows written into their
part (`parts/<i>/<table>/<unit>.parquet`). A unique key with the customer in it is checked within
each part when the part is built; any other key over the whole file, by a chunked hash scan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nextbest.constants import CUSTOMER_ID, FEATURE_PARTS_KEY, SNAPSHOT_DATE
from nextbest.features.build import no_snapshots, snapshot_months
from nextbest.io import RAW_TABLES
from nextbest.schema import SCHEMAS, SchemaError, duplicate_key, validate_arrow

CHUNK_ROWS = 500_000
# Rows of raw table one split task reads (whole row groups).
SPLIT_UNIT_ROWS = 4_000_000
# Work files are read once, soon after: fast to write matters more than small.
SPILL_COMPRESSION = "lz4"


def partition_of(customer_ids: pd.Series | np.ndarray, parts: int) -> np.ndarray:
    """The part of each customer: a stable 64-bit hash of the id as text (the same in every run and process)."""
    if parts == 1:
        return np.zeros(len(customer_ids), dtype=np.int64)
    values = np.asarray(customer_ids, dtype=object).astype(str).astype(object)
    return (pd.util.hash_array(values, categorize=True) % np.uint64(parts)).astype(np.int64)


def part_rows(path: Path) -> list[int] | None:
    """The rows of each customer part, in file order, as `features build` recorded them (None if absent)."""
    try:
        meta = pq.ParquetFile(path).metadata
    except (OSError, pa.ArrowInvalid):
        return None
    raw = (meta.metadata or {}).get(FEATURE_PARTS_KEY.encode())
    if raw is None:
        return None
    try:
        rows = [int(n) for n in json.loads(raw)]
    except (ValueError, TypeError):  # a damaged footer: the file is joined whole, through Feast
        return None
    return rows if sum(rows) == meta.num_rows else None


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


def open_raw(raw_dir: Path, name: str) -> pq.ParquetFile | None:
    path = raw_dir / f"{name}.parquet"
    if not path.exists():
        if name == "offers":
            return None
        raise SchemaError(f"{path}: file not found (run `nextbest generate` or `nextbest ingest` first)")
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise SchemaError(f"{path}: not a readable parquet file ({exc})") from None


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
        pf = open_raw(raw_dir, name)
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
        raise no_snapshots(raw_dir / "holdings.parquet")
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
        raise_first_repeat(path, table, repeated_hashes=repeated, source=source)


def raise_first_repeat(path: Path, table: str, source: str | Path | None = None, repeated_hashes=None,
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
