"""Adapters: public real-data sets mapped onto the canonical raw tables (docs/data-model.md).

- `nextbest.features.adapters.santander.ingest_santander`: Kaggle "Santander Product Recommendation"
  (monthly product holdings of ~950,000 customers, 2015-01 to 2016-05).
- `nextbest.features.adapters.uci_bank_marketing.ingest_uci`: UCI bank marketing (real telemarketing
  contacts and their outcome, 2008-05 to 2010-11).

Each adapter writes every canonical table into the `raw/` directory it is given (empty tables
where the data set has none, so that no table left over from an earlier run is mixed in), all
validated with `nextbest.schema.validate` and renamed into place only once everything succeeded.

This module holds what the adapters share: the report, empty canonical tables, the header
check and the approximate birth date. Submodules are not imported here, so importing one adapter
does not import the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from nextbest.schema import SCHEMAS, SchemaError

# Spellings of "missing" met in exported CSVs, after stripping blanks ("  NA" -> "NA").
NA_TOKENS = ("", "NA", "N/A", "NaN", "nan", "NULL", "null", "None")

DAYS_PER_YEAR = 365.25

_PANDAS_DTYPES = {"str": "object", "float": "float64", "int": "int64", "bool": "bool",
                  "datetime": "datetime64[ns]"}
_ARROW_TYPES = {"str": pa.string(), "float": pa.float64(), "int": pa.int64(), "bool": pa.bool_(),
                "datetime": pa.timestamp("ns")}


@dataclass
class IngestReport:
    """What an adapter read, kept and rejected, and the files it wrote.

    Attributes:
        source: the input file.
        rows_read: data rows in the file (header excluded).
        rows_kept: rows that made it into the canonical tables.
        rows_rejected: rows dropped; `rows_read == rows_kept + rows_rejected`.
        rejected_by_reason: rejected rows per reason (each row counted once, under its first reason).
        values_nulled: per source column, values present but unusable (unparseable or out of
            range), counted over all rows read; in kept rows they are written as missing.
        customers: rows of `customers.parquet`.
        snapshots: distinct monthly snapshots (Santander) or contact months (UCI).
        files: every file written, in the order they were committed.
        notes: what else the user should know (a table the source lacks, columns ignored).
    """

    source: Path
    rows_read: int = 0
    rows_kept: int = 0
    rows_rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    values_nulled: dict[str, int] = field(default_factory=dict)
    customers: int = 0
    snapshots: int = 0
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def reject(self, reason: str, count: int) -> None:
        if count:
            self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + int(count)
            self.rows_rejected += int(count)

    def nulled(self, column: str, count: int) -> None:
        if count:
            self.values_nulled[column] = self.values_nulled.get(column, 0) + int(count)

    def to_dict(self) -> dict:
        """JSON-ready view (paths as strings) for the CLI and logs."""
        out = asdict(self)
        out["source"] = str(self.source)
        out["files"] = [str(p) for p in self.files]
        return out


def arrow_schema(table: str) -> pa.Schema:
    """The Arrow schema a canonical table is written with (timestamps in ns, naive)."""
    return pa.schema([(c.name, _ARROW_TYPES[c.kind]) for c in SCHEMAS[table].columns])


def empty_table(table: str) -> pd.DataFrame:
    """A canonical table with no rows and the right column types (passes `validate`)."""
    return pd.DataFrame({c.name: pd.Series([], dtype=_PANDAS_DTYPES[c.kind]) for c in SCHEMAS[table].columns})


def require_columns(path: Path, required: tuple[str, ...], sep: str) -> list[str]:
    """Reads only the header of a delimited file and checks that the required columns are there.

    Args:
        path: the file (a `.zip`/`.gz` of it works too: pandas infers the compression).
        required: columns the adapter uses.
        sep: the separator the data set is published with.

    Returns:
        The header, in file order.

    Raises:
        SchemaError: the file is missing, empty or unreadable, or lacks a required column; the
            message names the file and the missing column(s), and says so when the header looks
            split by another separator.
    """
    path = Path(path)
    if not path.exists():
        raise SchemaError(f"{path}: file not found")
    if not path.is_file():
        raise SchemaError(f"{path}: not a file")
    try:
        header = list(pd.read_csv(path, sep=sep, nrows=0, encoding="utf-8", encoding_errors="replace").columns)
    except pd.errors.EmptyDataError:
        raise SchemaError(f"{path}: empty file, expected a header with column(s) {list(required)}") from None
    except (pd.errors.ParserError, OSError, ValueError) as exc:
        raise SchemaError(f"{path}: not a readable {sep!r}-separated file ({exc})") from None
    try:
        # pandas takes a first data line longer than the header as an index plus shifted columns,
        # silently; reading header and first line as plain rows makes that a tokenizing error.
        pd.read_csv(path, sep=sep, header=None, nrows=2, dtype=str, encoding="utf-8", encoding_errors="replace")
    except pd.errors.ParserError as exc:
        raise SchemaError(f"{path}: malformed CSV: {parser_error_detail(exc)}") from None
    missing = [c for c in required if c not in header]
    if missing:
        hint = ""
        others = [s for s in (",", ";", "\t", "|") if s != sep and any(s in h for h in header)]
        if others:
            hint = f"; the header looks {others[0]!r}-separated, expected {sep!r}"
        shown = header if len(header) <= 12 else [*header[:12], "..."]
        raise SchemaError(f"{path}: missing column(s) {missing} (has {shown}){hint}")
    return header


def parser_error_detail(exc: Exception) -> str:
    """pandas' tokenizing error without its C-level preamble ("Expected 48 fields in line 19, saw 49")."""
    return str(exc).strip().removeprefix("Error tokenizing data. C error: ")


def approx_birth_date(age: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Birth date estimated from an age in whole years observed at a date.

    Someone aged `a` at date `d` was born in the year before `d - a years`; the midpoint,
    `d - (a + 0.5) years`, is unbiased and gives back exactly `a` when features compute the age
    at `d` as `floor(days / 365.25)`.

    Args:
        age: ages in years (float; NaN where unknown).
        at: datetime64 dates the ages were observed at, same shape.

    Returns:
        datetime64[ns] birth dates (NaT where the age is NaN), at midnight.
    """
    age = np.asarray(age, dtype=float)
    at = np.asarray(at, dtype="datetime64[ns]")
    days = np.round((age + 0.5) * DAYS_PER_YEAR)
    ok = np.isfinite(days) & ~np.isnat(at)
    out = np.full(age.shape, np.datetime64("NaT"), dtype="datetime64[ns]")
    out[ok] = (at[ok].astype("datetime64[D]") - days[ok].astype("timedelta64[D]")).astype("datetime64[ns]")
    return out
