"""The month grid the labels come from, read straight from the raw parquet files.

Labels need only who the customers are, which products each holds at each snapshot and when each was
seen: three columns of holdings and two of interactions. Reading just those, a batch at a time, and
matching ids in Arrow keeps a large bank's labels from costing what reading and converting every
table in full would (a million customers' interactions run to tens of millions of rows).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nextbest.constants import CUSTOMER_ID, PRODUCT_ID, SNAPSHOT_DATE
from nextbest.features.build import MonthGrid, no_snapshots, snapshot_months
from nextbest.schema import SchemaError, validate, validate_arrow

BATCH_ROWS = 2_000_000
GRID_COLUMNS = {"customers": (CUSTOMER_ID,), "holdings": (CUSTOMER_ID, SNAPSHOT_DATE, PRODUCT_ID),
                "interactions": (CUSTOMER_ID, "event_date")}


def read_grid(raw_dir: Path, products: list[str]) -> MonthGrid:
    """`features.build.month_grid` of the bank in `raw_dir`, reading only the columns it needs.

    Raises:
        SchemaError: a file is missing or unreadable, or a column it reads breaks the schema (the
            message names file, column, row and value, as for a full read).
    """
    ids = _column(raw_dir, "customers", CUSTOMER_ID)
    customers = pd.Index(pd.unique(ids), name=CUSTOMER_ID)
    value_set = pa.array(customers.to_numpy(), type=pa.string())

    # The snapshot dates first (one column), so that the months are known before the cube is filled.
    chunks = [b.column(SNAPSHOT_DATE) for b in _batches(raw_dir, "holdings", products, (SNAPSHOT_DATE,))]
    if not sum(len(c) for c in chunks):
        raise no_snapshots(raw_dir / "holdings.parquet")
    dates = pc.unique(pa.chunked_array(chunks))
    dates = dates.take(pc.sort_indices(dates))  # sorted, as the months are
    months = snapshot_months(dates.to_pandas())
    held = np.zeros((len(customers), len(months), len(products)), dtype=bool)
    product_set = pa.array(list(products), type=pa.string())
    for batch in _batches(raw_dir, "holdings", products):
        ci = _positions(batch.column(CUSTOMER_ID), value_set)
        mi = _positions(batch.column(SNAPSHOT_DATE), dates)
        pi = _positions(batch.column(PRODUCT_ID), product_set)
        ok = (ci >= 0) & (mi >= 0) & (pi >= 0)
        held[ci[ok], mi[ok], pi[ok]] = True

    seen = np.zeros((len(customers), len(months)), dtype=bool)
    edges = months.values.astype("datetime64[ns]").astype(np.int64)  # UTC, as Arrow stores time
    for batch in _batches(raw_dir, "interactions", products):
        ci = _positions(batch.column(CUSTOMER_ID), value_set)
        when = pc.cast(batch.column("event_date"), pa.timestamp("ns"), safe=False).cast(pa.int64())
        ns = when.to_numpy(zero_copy_only=False)
        # A day's events belong to that day's month, whatever their time of day (as features/build.py counts them).
        mi = np.searchsorted(edges, ns - ns % 86_400_000_000_000)
        ok = (ci >= 0) & (mi < len(months))
        seen[ci[ok], mi[ok]] = True
    known = np.logical_or.accumulate(held.any(2) | seen, axis=1)
    return MonthGrid(customers, months, held, known)


def _open(raw_dir: Path, name: str, wanted: tuple[str, ...]) -> pq.ParquetFile:
    """The table's parquet file, which must hold the `wanted` columns."""
    path = raw_dir / f"{name}.parquet"
    if not path.exists():
        raise SchemaError(f"{path}: file not found (run `nextbest generate` or `nextbest ingest` first)")
    try:
        file = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise SchemaError(f"{path}: not a readable parquet file ({exc})") from None
    missing = [c for c in wanted if c not in file.schema_arrow.names]
    if missing:
        raise SchemaError(f"{path}: missing column(s) {missing} (has {file.schema_arrow.names})")
    return file


def _batches(raw_dir: Path, name: str, products: list[str], wanted: tuple[str, ...] | None = None):
    """The table's grid columns (or `wanted`), `BATCH_ROWS` rows at a time, each batch checked against the
    schema."""
    path, offset = raw_dir / f"{name}.parquet", 0
    wanted = wanted or GRID_COLUMNS[name]
    file = _open(raw_dir, name, wanted)
    for batch in file.iter_batches(batch_size=BATCH_ROWS, columns=list(wanted)):
        table = pa.Table.from_batches([batch])
        table = pa.table({c: _plain(table.column(c)) for c in wanted})
        validate_arrow(table, name, source=path, products=products, row_offset=offset, columns=wanted)
        offset += len(table)
        yield table


def _column(raw_dir: Path, name: str, column: str) -> np.ndarray:
    """One column of a small table (customers), checked, its unique key included, as text."""
    df = _open(raw_dir, name, (column,)).read(columns=[column]).to_pandas()
    validate(df, name, source=raw_dir / f"{name}.parquet", columns=(column,))
    return df[column].astype(str).to_numpy()


def _plain(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Dictionary-encoded text as plain text (what the schema checks and the matching expect)."""
    return column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column


def _positions(values: pa.ChunkedArray, value_set: pa.Array) -> np.ndarray:
    """Each value's position in `value_set`, -1 where it is not there."""
    if pa.types.is_string(value_set.type) and not pa.types.is_string(values.type):
        values = values.cast(pa.string())  # large_string
    return pc.fill_null(pc.index_in(values, value_set=value_set), -1).to_numpy(zero_copy_only=False)
