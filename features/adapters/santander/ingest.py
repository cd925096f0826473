"""The I/O edge of the Santander adapter: streams the file chunk by chunk into the canonical raw
tables (see the package docstring for what is written and what is rejected)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from nextbest.config import Catalogue
from nextbest.features.adapters import (IngestReport, approx_birth_date, arrow_schema, empty_table,
                                        parser_error_detail, require_columns)
from nextbest.features.adapters.santander.customers import CustomerState, latest_rows
from nextbest.features.adapters.santander.mapping import REQUIRED_COLUMNS, SantanderMapping, load_santander_mapping
from nextbest.features.adapters.santander.parse import REJECT_REASONS, ParsedChunk, parse_chunk
from nextbest.io import StreamingParquetWriter
from nextbest.schema import SchemaError, validate

# Nearly one distinct value per row: plain text (categories would be sorted for nothing).
_HIGH_CARDINALITY = ("ncodpers", "renta")
_READ_DTYPES: defaultdict[str, Any] = defaultdict(lambda: "category", {c: str for c in _HIGH_CARDINALITY})
DEFAULT_CHUNKSIZE = 500_000
_DUPLICATE = REJECT_REASONS.index("duplicate_customer_month") + 1


def ingest_santander(csv_path: Path, out_dir: Path, catalogue: Catalogue, chunksize: int = DEFAULT_CHUNKSIZE,
                     on_chunk: Callable[[int], None] | None = None,
                     mapping: SantanderMapping | None = None) -> IngestReport:
    """Streams `train_ver2.csv` into the canonical raw tables in `out_dir`.

    Args:
        csv_path: the Kaggle file (plain, or the `.zip` it is downloaded as).
        out_dir: the work directory's `raw/` folder; its five canonical tables are replaced.
        catalogue: the product catalogue the mapping must point into.
        chunksize: rows parsed at a time; memory for rows is bounded by it.
        on_chunk: called after each chunk with the number of rows read so far (progress bars).
        mapping: flag -> product mapping; default `configs/adapters/santander_products.yaml`.

    Returns:
        What was read, kept and rejected (by reason), and the files written.

    Raises:
        SchemaError: the file is missing, lacks a required column, is not comma-separated, has a
            malformed line, or has no usable row; nothing is written then.
        ConfigError: the mapping file is invalid.
    """
    csv_path, out_dir = Path(csv_path), Path(out_dir)
    if chunksize < 1:
        raise ValueError(f"chunksize must be at least 1, got {chunksize}")
    mapping = mapping or load_santander_mapping(catalogue)
    require_columns(csv_path, REQUIRED_COLUMNS, sep=",")
    products = catalogue.ids
    matrix = mapping.matrix(products).astype(np.float32)  # float: the product below runs in BLAS
    report = IngestReport(source=csv_path)
    state = CustomerState()
    writer = StreamingParquetWriter(out_dir)
    holdings_path = out_dir / "holdings.parquet"
    holdings_rows = 0
    try:
        # Text throughout, so that every spelling of NA is ours to interpret (na_filter=False).
        # Low-cardinality columns are categorical: each distinct string is held once per chunk,
        # not once per cell. All columns are read, not `usecols`: only then does pandas refuse a
        # line with too many fields (an unquoted comma would otherwise shift the product flags).
        reader = pd.read_csv(csv_path, sep=",", dtype=_READ_DTYPES, na_filter=False, chunksize=chunksize,
                             encoding="utf-8", encoding_errors="replace")
        with reader:
            for chunk in reader:
                holdings_rows += _ingest_chunk(chunk, mapping, products, matrix, state, report, writer, holdings_path)
                if on_chunk:
                    on_chunk(report.rows_read)
        if report.rows_kept == 0:
            raise SchemaError(f"{csv_path}: no usable row among {report.rows_read:,} "
                              f"(rejected: {report.rejected_by_reason or 'none'})")
        if not holdings_rows:  # the file is created by the first non-empty chunk
            writer.write("holdings", pa.Table.from_pandas(empty_table("holdings"), schema=arrow_schema("holdings"),
                                                          preserve_index=False))
        customers = validate(state.customers(), "customers", source=out_dir / "customers.parquet")
        report.customers = len(customers)
        report.snapshots = len(state.seen)
        writer.write("customers", pa.Table.from_pandas(customers, schema=arrow_schema("customers"),
                                                       preserve_index=False))
        for name in ("transactions", "interactions", "offers"):
            writer.write(name, pa.Table.from_pandas(empty_table(name), schema=arrow_schema(name), preserve_index=False))
        report.files = writer.commit()
    except pd.errors.ParserError as exc:
        writer.abort()
        raise SchemaError(f"{csv_path}: malformed CSV: {parser_error_detail(exc)}") from None
    except BaseException:
        writer.abort()
        raise
    return report


def _ingest_chunk(chunk: pd.DataFrame, mapping: SantanderMapping, products: list[str], matrix: np.ndarray,
                  state: CustomerState, report: IngestReport, writer: StreamingParquetWriter,
                  holdings_path: Path) -> int:
    """Parses one chunk, updates the per-customer state, appends its holdings; returns their number."""
    parsed = parse_chunk(chunk, mapping)
    report.rows_read += len(chunk)
    for column, count in parsed.nulled.items():
        report.nulled(column, count)

    ok = parsed.reason == 0
    cidx = np.full(len(chunk), -1, dtype=np.int64)
    cidx[ok] = state.register(parsed.ncodpers[ok])
    dup = np.zeros(len(chunk), dtype=bool)
    dup[ok] = state.duplicates(cidx[ok], parsed.month[ok])
    parsed.reason[dup] = _DUPLICATE
    counts = np.bincount(parsed.reason, minlength=len(REJECT_REASONS) + 1)
    for i, reason in enumerate(REJECT_REASONS, start=1):
        report.reject(reason, counts[i])
    keep = parsed.reason == 0
    report.rows_kept += int(keep.sum())

    # [rows, 24] flags @ [24, products] mapping: > 0 where any flag of the product is 1, so
    # several flags mapped to one product give one holding.
    held = ((parsed.flags[keep] == 1).astype(np.float32) @ matrix) > 0
    held_now = np.zeros(len(chunk), dtype=np.int16)
    held_now[keep] = held.sum(axis=1)
    a, month = state.a, parsed.month
    a["ever_held"][cidx[keep & (held_now > 0)]] = True

    rows = latest_rows(cidx, month, keep)
    c = cidx[rows]
    newer = month[rows] > a["last_month"][c]
    c, rows = c[newer], rows[newer]
    a["last_month"][c] = month[rows]
    a["active"][c] = parsed.active[rows]
    a["held_now"][c] = held_now[rows]

    state.update("birth", cidx, month, approx_birth_date(parsed.age, parsed.snapshot), keep & ~np.isnan(parsed.age))
    state.update("gender", cidx, month, state.codes("gender", parsed.gender), keep & pd.notna(parsed.gender))
    state.update("region", cidx, month, state.codes("region", parsed.region), keep & pd.notna(parsed.region))
    state.update("income", cidx, month, parsed.income, keep & ~np.isnan(parsed.income))
    state.update("join", cidx, month, parsed.join_date, keep & ~np.isnat(parsed.join_date))

    holdings = validate(_holdings_frame(parsed, keep, held, products), "holdings", source=holdings_path,
                        products=products)
    if len(holdings):
        writer.write("holdings", pa.Table.from_pandas(holdings, schema=arrow_schema("holdings"), preserve_index=False))
    return len(holdings)


def _holdings_frame(parsed: ParsedChunk, keep: np.ndarray, held: np.ndarray, products: list[str]) -> pd.DataFrame:
    rows, cols = np.nonzero(held)
    src = np.flatnonzero(keep)[rows]
    return pd.DataFrame({
        "customer_id": pd.Series(parsed.ncodpers[src]).astype(str),
        "snapshot_date": parsed.snapshot[src],
        "product_id": np.asarray(products, dtype=object)[cols],
        "balance": np.full(len(src), np.nan),
    })
