"""UCI bank marketing (`bank-additional-full.csv`) -> the canonical raw tables.

Real telemarketing calls of a Portuguese retail bank offering a term deposit, May 2008 to
November 2010 (Moro, Cortez and Rita 2014): one row per contact, semicolon-separated, quoted
strings, "unknown" for missing categories, ordered by date but without a date column.

What is written (all validated with `nextbest.schema.validate`):

- `offers.parquet`: one offer per row: `term_deposit` on `call_center` (the `contact` column only
  says whether the client was called on a cellular or a landline: both are phone calls),
  `offered_at` the derived contact date (see `contact_dates`; no time of day is known, so it is
  midnight), `response` `accept` where `y` is "yes", else `reject`.
- `customers.parquet`: one customer per row, since the data set has no client id: `U0000001`
  is the first data row of the file, so ids are stable for the same file. `birth_date` is
  estimated from `age` at the contact date; gender, region, income and join date are not in the
  data (`gender` "unknown", the others missing); `status` is `active` (the documentation calls
  them the bank's clients); no consent is recorded, so `marketing_opt_out` is False and every
  `consent_*` False, the privacy-safe default.
- `uci_contacts.parquet`: every original attribute of the kept rows, with `customer_id`,
  `offer_id` and `contact_date`, for the campaign-response model (`nextbest.training.campaign.load_contacts`
  reads it). It keeps `duration`, the call length, which is known only after the call and
  decides its outcome (a 0-second call is always a "no"): never use it as a model input (the
  file's schema metadata lists it under `nextbest.leaky_columns`).
- `holdings`, `transactions`, `interactions`: empty tables with the right columns; the data set
  has none, and an empty table replaces any left over from an earlier run.

Rows are rejected, under the first reason that applies, when `month` or `day_of_week` is not one
of the documented values, `contact` is neither "cellular" nor "telephone", or `y` is neither "yes"
nor "no". Numbers that do not parse (and ages outside [0, 120]) keep the row, become missing and
are counted in `IngestReport.values_nulled`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from nextbest.config import Catalogue, load_catalogue
from nextbest.features.adapters import (IngestReport, approx_birth_date, arrow_schema, empty_table, parser_error_detail,
                                        require_columns)
from nextbest.schema import SchemaError, validate
from nextbest.io import StreamingParquetWriter

CATEGORICAL = ("job", "marital", "education", "default", "housing", "loan", "contact", "month", "day_of_week",
               "poutcome")
NUMERIC = ("age", "duration", "campaign", "pdays", "previous", "emp.var.rate", "cons.price.idx", "cons.conf.idx",
           "euribor3m", "nr.employed")
COLUMNS = ("age", "job", "marital", "education", "default", "housing", "loan", "contact", "month", "day_of_week",
           "duration", "campaign", "pdays", "previous", "poutcome", "emp.var.rate", "cons.price.idx",
           "cons.conf.idx", "euribor3m", "nr.employed", "y")
LEAKY = ("duration",)  # known only after the call: kept for reference, never a model input
LEAKY_METADATA_KEY = b"nextbest.leaky_columns"  # in uci_contacts.parquet's schema, comma-separated

MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CONTACTS = ("cellular", "telephone")
FIRST_YEAR = 2008  # the documentation: "ordered by date (from May 2008 to November 2010)"
PRODUCT_ID = "term_deposit"
CHANNEL = "call_center"
MAX_AGE = 120

REJECT_REASONS = ("bad_month", "bad_day_of_week", "bad_contact", "bad_y")


def contact_dates(month: Sequence[str], day_of_week: Sequence[str], first_year: int = FIRST_YEAR) -> np.ndarray:
    """Calendar dates of contacts listed in date order with only their month and weekday.

    The year starts at `first_year` and goes up each time the month goes backwards (the file
    runs May 2008 .. Nov 2010 and has no January or February rows). Within a month, each run of
    rows with the same weekday is one calling day: the first is the month's first date with that
    weekday, each next one the next date with its weekday. These are the earliest dates consistent
    with the order: a week without any calls cannot be seen, so a date can be early by whole
    weeks, never in the wrong month, never out of order. A day that would run past the month's
    end (impossible for the real file) stays on the month's last day.

    Args:
        month: "jan".."dec" per row, in file order.
        day_of_week: "mon".."sun" per row.
        first_year: year of the first row.

    Returns:
        datetime64[ns] dates (midnight), non-decreasing.

    Raises:
        ValueError: a month or weekday is not one of the documented values.
    """
    m = pd.Index(MONTHS).get_indexer(pd.Series(month, dtype=object).str.strip().str.lower())
    wd = pd.Index(WEEKDAYS).get_indexer(pd.Series(day_of_week, dtype=object).str.strip().str.lower())
    if (m < 0).any() or (wd < 0).any():
        raise ValueError("month and day_of_week must be 'jan'..'dec' and 'mon'..'sun'")
    n = len(m)
    out = np.empty(n, dtype="datetime64[D]")
    if not n:
        return out.astype("datetime64[ns]")
    year = first_year + np.concatenate([[0], np.cumsum(m[1:] < m[:-1])])
    block = year * 12 + m
    new_block = np.r_[True, block[1:] != block[:-1]]
    starts = np.flatnonzero(new_block | np.r_[True, wd[1:] != wd[:-1]])  # first row of each calling day
    ends = np.r_[starts[1:], n]
    day = np.datetime64("NaT", "D")
    for s, e in zip(starts, ends):
        first = np.datetime64(f"{year[s]:04d}-{m[s] + 1:02d}-01")
        last = (first.astype("datetime64[M]") + 1).astype("datetime64[D]") - 1
        # 1970-01-01 was a Thursday (weekday 3 with Monday = 0).
        if new_block[s]:
            day = first + (wd[s] - (first.astype(np.int64) + 3) % 7) % 7
        else:
            day = day + (wd[s] - (day.astype(np.int64) + 3) % 7 - 1) % 7 + 1
        day = min(day, last)
        out[s:e] = day
    return out.astype("datetime64[ns]")


def _clean(values: pd.Series) -> pd.Series:
    return values.astype(str).str.strip()


def parse_contacts(raw: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, dict[str, int]]:
    """Types the original attributes and decides which rows are rejected.

    Args:
        raw: the file as read, every column text, in file order.

    Returns:
        (typed contacts with `row` the 1-based data-row number, int8 reason per row with 0 for
        kept and i + 1 for `REJECT_REASONS[i]`, values nulled per column).
    """
    df = pd.DataFrame({"row": np.arange(1, len(raw) + 1)})
    nulled: dict[str, int] = {}
    for c in CATEGORICAL:
        df[c] = _clean(raw[c])
    for c in ("month", "day_of_week", "contact"):
        df[c] = df[c].str.lower()
    for c in NUMERIC:
        text = _clean(raw[c])
        num = pd.to_numeric(text, errors="coerce")
        bad = num.isna() & (text != "")
        if c == "age":
            out_of_range = (num < 0) | (num > MAX_AGE)
            bad |= out_of_range
            num = num.mask(out_of_range)
        if bad.any():
            nulled[c] = int(bad.sum())
        df[c] = num
    df["y"] = _clean(raw["y"]).str.lower()
    checks = (~df["month"].isin(MONTHS), ~df["day_of_week"].isin(WEEKDAYS), ~df["contact"].isin(CONTACTS),
              ~df["y"].isin(("yes", "no")))
    reason = np.zeros(len(df), dtype=np.int8)
    for code, failed in reversed(list(enumerate(checks, start=1))):
        reason[failed.to_numpy()] = code
    return df, reason, nulled


def _ids(prefix: str, rows: np.ndarray) -> np.ndarray:
    width = max(7, len(str(int(rows.max())))) if len(rows) else 7
    return np.array([f"{prefix}{r:0{width}d}" for r in rows], dtype=object)


def build_tables(contacts: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Canonical `customers` and `offers` plus `uci_contacts` from the kept, typed contacts (pure).

    Args:
        contacts: output of `parse_contacts` restricted to kept rows, in file order.
    """
    contacts = contacts.reset_index(drop=True)
    dates = contact_dates(contacts["month"], contacts["day_of_week"])
    rows = contacts["row"].to_numpy()
    customer_id, offer_id = _ids("U", rows), _ids("UO", rows)
    n = len(contacts)
    false = np.zeros(n, dtype=bool)
    customers = pd.DataFrame({
        "customer_id": customer_id,
        "birth_date": approx_birth_date(contacts["age"].to_numpy(dtype=float), dates),
        "gender": np.full(n, "unknown", dtype=object),
        "region": np.full(n, None, dtype=object),
        "income": np.full(n, np.nan),
        "join_date": np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]"),
        "status": np.full(n, "active", dtype=object),
        "marketing_opt_out": false,
        # No consent is recorded: fail closed, as for every adapter.
        "consent_email": false.copy(), "consent_push": false.copy(),
        "consent_sms": false.copy(), "consent_call": false.copy(),
    })
    offers = pd.DataFrame({
        "offer_id": offer_id,
        "customer_id": customer_id,
        "product_id": np.full(n, PRODUCT_ID, dtype=object),
        "channel": np.full(n, CHANNEL, dtype=object),
        "offered_at": dates,
        "response": np.where(contacts["y"].to_numpy() == "yes", "accept", "reject").astype(object),
    })
    uci = pd.concat([pd.DataFrame({"customer_id": customer_id, "offer_id": offer_id, "contact_date": dates}),
                     contacts[list(COLUMNS)]], axis=1)
    return {"customers": customers, "offers": offers, "uci_contacts": uci}


def ingest_uci(csv_path: Path, out_dir: Path, catalogue: Catalogue | None = None) -> IngestReport:
    """Reads `bank-additional-full.csv` and writes the canonical raw tables into `out_dir`.

    Args:
        csv_path: the semicolon-separated file.
        out_dir: the work directory's `raw/` folder; its five canonical tables and
            `uci_contacts.parquet` are replaced.
        catalogue: product ids offers are checked against (default `configs/products.yaml`).

    Returns:
        What was read, kept and rejected (by reason), and the files written.

    Raises:
        SchemaError: the file is missing, lacks a required column, is not semicolon-separated,
            has a malformed line, or has no usable row; nothing is written then.
    """
    csv_path, out_dir = Path(csv_path), Path(out_dir)
    require_columns(csv_path, COLUMNS, sep=";")
    products = (catalogue or load_catalogue()).ids
    try:
        # All text: the original spellings ("unknown", "999", "admin.") are ours to interpret.
        raw = pd.read_csv(csv_path, sep=";", dtype=str, keep_default_na=False, encoding="utf-8",
                          encoding_errors="replace")
    except pd.errors.ParserError as exc:
        raise SchemaError(f"{csv_path}: malformed CSV: {parser_error_detail(exc)}") from None
    contacts, reason, nulled = parse_contacts(raw)
    report = IngestReport(source=csv_path, rows_read=len(raw))
    counts = np.bincount(reason, minlength=len(REJECT_REASONS) + 1)
    for i, why in enumerate(REJECT_REASONS, start=1):
        report.reject(why, counts[i])
    kept = contacts[reason == 0]
    report.rows_kept = len(kept)
    for column, count in nulled.items():
        report.nulled(column, count)
    if not len(kept):
        raise SchemaError(f"{csv_path}: no usable row among {report.rows_read:,} "
                          f"(rejected: {report.rejected_by_reason or 'none'})")

    tables = build_tables(kept)
    validate(tables["customers"], "customers", source=out_dir / "customers.parquet")
    validate(tables["offers"], "offers", source=out_dir / "offers.parquet", products=products)
    report.customers = len(tables["customers"])
    report.snapshots = int(pd.Series(tables["offers"]["offered_at"]).dt.to_period("M").nunique())

    writer = StreamingParquetWriter(out_dir)
    try:
        for name in ("customers", "offers"):
            writer.write(name, pa.Table.from_pandas(tables[name], schema=arrow_schema(name), preserve_index=False))
        for name in ("holdings", "transactions", "interactions"):
            writer.write(name, pa.Table.from_pandas(empty_table(name), schema=arrow_schema(name), preserve_index=False))
        contacts = pa.Table.from_pandas(tables["uci_contacts"], preserve_index=False)
        # The warning travels with the file, for readers that never see this docstring.
        contacts = contacts.replace_schema_metadata({**(contacts.schema.metadata or {}),
                                                     LEAKY_METADATA_KEY: ",".join(LEAKY).encode()})
        writer.write("uci_contacts", contacts)
        report.files = writer.commit()
    except BaseException:
        writer.abort()
        raise
    return report
