"""The bank's own customer feature tables (`configs/features.yaml`) -> `features/<name>.parquet`.

Each table is read in chunks from its file (parquet or CSV) or database (a table or a query), its
declared columns converted to their kinds (numeric -> float32, categorical -> text), and written
beside the built feature views: keyed by `customer_id` and `event_timestamp`, in the same customer
parts as the built views (with the parts' row counts in the footer), so that training sets join it
part by part. Nothing in `features/` changes unless every table succeeded.

What is refused, naming the source, column, row and value: a missing column, a value that is not of
its kind, a duplicate (customer, date), an undecodable byte (with the offset and `encoding:`), a
column name that a built view already uses, and a table every row of which is dated after the last
snapshot (it could only feed snapshots it describes the future of). What is counted, reported and
left out: rows of customers that `raw/customers.parquet` does not know, rows without a customer or
a date, and rows dated after the last snapshot.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nextbest.config import BankTable, FeaturesConfig
from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP, FEATURE_PARTS_KEY, REALTIME_FEATURES, REALTIME_VIEW
from nextbest.features.adapters.canonical import Database, convert_column, csv_chunks
from nextbest.features.build import PROFILE_VIEW, VIEWS
from nextbest.features.split import part_rows, partition_of
from nextbest.io import StreamingParquetWriter
from nextbest.schema import SchemaError

CHUNK_ROWS = 500_000
_ROW = "__source_row"  # each row's place in the source (0-based data rows), for messages
# Request-time features of the on-demand view: a bank column of the same name would shadow them.
REQUEST_FEATURES = ("channel", "hour", "weekday", "channel_digital", "hour_sin", "hour_cos", "is_weekend",
                    "is_evening")


@dataclass
class TableReport:
    """What one table's import read, kept and left out."""

    name: str
    source: str
    rows_read: int = 0
    rows_kept: int = 0
    customers: int = 0
    left_out: dict[str, int] = field(default_factory=dict)
    first: str | None = None
    last: str | None = None

    def lines(self) -> list[str]:
        out = [f"{self.name}: {self.rows_kept:,} of {self.rows_read:,} rows kept ({self.customers:,} customers, "
               f"{self.first} .. {self.last}) from {self.source}"]
        out += [f"  left out: {n:,} row(s) {why}" for why, n in self.left_out.items() if n]
        return out


def reserved_columns(features_dir: Path) -> dict[str, str]:
    """Feature names the built views (and request and real-time context) already use -> where."""
    out = {c: "request context" for c in REQUEST_FEATURES}
    out.update({c: REALTIME_VIEW for c in REALTIME_FEATURES})
    for view in VIEWS:
        path = features_dir / f"{view}.parquet"
        if path.exists():
            out.update({c: view for c in pq.read_schema(path).names if c not in (CUSTOMER_ID, EVENT_TIMESTAMP)})
    return out


def _chunks(table: BankTable, chunksize: int) -> Iterator[pd.DataFrame]:
    if table.sql is not None:
        db = Database(table.sql.url, {table.name: table.sql.table} if table.sql.table else {}, chunksize,
                      setting=f"sql.url of table {table.name!r} in configs/features.yaml:")
        try:
            if table.sql.query is not None:
                yield from db.query_chunks(table.sql.query)
            else:
                if db.locate(table.name) is None:
                    raise SchemaError(f"{db.shown}: no table {table.sql.table!r}")
                yield from db.chunks(table.name)
        finally:
            db.close()
        return
    path = table.source_path()
    if not path.is_file():
        raise SchemaError(f"{path}: file not found (table {table.name!r} of configs/features.yaml)")
    if path.suffix == ".parquet":
        try:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=chunksize):
                yield batch.to_pandas()
        except (OSError, pa.ArrowInvalid) as exc:
            raise SchemaError(f"{path}: not a readable parquet file ({exc})") from None
        return
    yield from csv_chunks(path, table.encoding, chunksize,
                          f"set the table's encoding in configs/features.yaml, for example `encoding: latin-1` "
                          f"under {table.name!r}")


def read_table(table: BankTable, chunksize: int = CHUNK_ROWS) -> pd.DataFrame:
    """The table's key, date and declared columns, each converted to its kind, and each row's place in the
    source; a bad value is a SchemaError naming the source, column, row (0-based, data rows) and value."""
    where = table.describe()
    needed = [CUSTOMER_ID, *([table.timestamp] if table.timestamp else []), *table.columns]
    frames, offset = [], 0
    for chunk in _chunks(table, chunksize):
        twice = sorted(set(chunk.columns[chunk.columns.duplicated()]))
        if twice:
            raise SchemaError(f"{where}: column(s) {twice} appear more than once (a join: select each column once, "
                              "or rename one)")
        missing = [c for c in needed if c not in chunk.columns]
        if missing:
            raise SchemaError(f"{where}: missing column(s) {missing} (has {list(chunk.columns)})")
        out = {CUSTOMER_ID: convert_column(chunk[CUSTOMER_ID], "str", where, CUSTOMER_ID, offset)}
        if table.timestamp:
            out[EVENT_TIMESTAMP] = convert_column(chunk[table.timestamp], "datetime", where, table.timestamp, offset)
        for column, kind in table.columns.items():
            values = convert_column(chunk[column], "float" if kind == "numeric" else "str", where, column, offset)
            if kind == "numeric":
                huge = (values.abs() > np.finfo(np.float32).max).to_numpy()
                if huge.any():
                    i = int(np.argmax(huge))
                    raise SchemaError(f"{where}: column '{column}', row {offset + i}: value {chunk[column].iloc[i]!r} "
                                      "is beyond the range of a feature (about 3.4e38)")
                values = values.astype("float32")
            out[column] = values
        out[_ROW] = np.arange(offset, offset + len(chunk))
        frames.append(pd.DataFrame(out))
        offset += len(chunk)
    if not frames:
        raise SchemaError(f"{where}: no rows")
    df = pd.concat(frames, ignore_index=True)
    if table.as_of is not None:
        df[EVENT_TIMESTAMP] = pd.Timestamp(table.as_of)
    return df


def _duplicate(df: pd.DataFrame, table: BankTable) -> None:
    dup = df.duplicated([CUSTOMER_ID, EVENT_TIMESTAMP], keep="first").to_numpy()
    if dup.any():
        i = int(np.argmax(dup))
        when = "" if table.as_of else f" and {table.timestamp} {df[EVENT_TIMESTAMP].iloc[i]}"
        what = "customer" if table.as_of else "(customer, date)"
        raise SchemaError(f"{table.describe()}: column '{CUSTOMER_ID}', row {df[_ROW].iloc[i]}: value "
                          f"{df[CUSTOMER_ID].iloc[i]!r}{when} appears more than once; one row per {what}")


def prepare_table(df: pd.DataFrame, table: BankTable, known: pd.Index, last_snapshot: pd.Timestamp,
                  report: TableReport) -> pd.DataFrame:
    """Leaves out (and counts) rows without key or date, of unknown customers and dated after the last
    snapshot; refuses duplicates and a table that would feed no snapshot."""
    report.rows_read = len(df)
    no_key = df[CUSTOMER_ID].isna() | df[EVENT_TIMESTAMP].isna()
    df = df[~no_key]
    unknown = ~df[CUSTOMER_ID].isin(known)
    df = df[~unknown]
    _duplicate(df.reset_index(drop=True), table)
    later = df[EVENT_TIMESTAMP] > last_snapshot
    if len(df) and later.all():
        raise SchemaError(
            f"{table.describe()}: column '{table.timestamp or 'as_of'}': every row is dated after the last snapshot "
            f"({last_snapshot.date()}; earliest {df[EVENT_TIMESTAMP].min().date()}): it would describe the future "
            "of every snapshot it fed; date each row at or before the snapshot it describes")
    df = df[~later].drop(columns=_ROW)
    report.left_out = {"without a customer_id or date": int(no_key.sum()),
                       "of customers not in raw/customers.parquet": int(unknown.sum()),
                       f"dated after the last snapshot ({last_snapshot.date()})": int(later.sum())}
    if df.empty:
        raise SchemaError(f"{table.describe()}: no row is left for a known customer ({report.rows_read:,} read; "
                          + "; ".join(f"{n:,} {why}" for why, n in report.left_out.items() if n) + ")")
    report.rows_kept, report.customers = len(df), int(df[CUSTOMER_ID].nunique())
    report.first, report.last = str(df[EVENT_TIMESTAMP].min().date()), str(df[EVENT_TIMESTAMP].max().date())
    return df


def import_bank_tables(cfg: FeaturesConfig, raw_dir: Path, features_dir: Path, config_path: Path | str,
                       chunksize: int = CHUNK_ROWS, earlier: dict[str, tuple[str, str]] | None = None,
                       ) -> list[TableReport]:
    """Reads, checks and writes every table of `cfg` into `features_dir` (all or none).

    `earlier` holds the columns that feature service versions already read (column -> (table, version)):
    another table may not take their names, or a champion would read the wrong one.

    Raises:
        SchemaError: a table that cannot be imported, named with its source, column, row and value.
        FileNotFoundError: the built views or the raw customers are missing.
    """
    if not cfg.tables:
        return []
    profile = features_dir / f"{PROFILE_VIEW}.parquet"
    if not profile.exists():
        raise FileNotFoundError(f"{profile}: not found; run `nextbest features build` first")
    reserved = reserved_columns(features_dir)
    for t in cfg.tables:
        if t.name in (*VIEWS, REALTIME_VIEW):
            raise SchemaError(f"{config_path}: table {t.name!r}: the name of a built feature view; choose another")
        clash = {c: reserved[c] for c in t.columns if c in reserved}
        clash.update({c: f"table {table!r}, read by {version}" for c, (table, version) in (earlier or {}).items()
                      if c in t.columns and table != t.name})
        if clash:
            c, view = next(iter(clash.items()))
            raise SchemaError(f"{config_path}: table {t.name!r}: column {c!r} is already a feature of {view}; "
                              "rename it (e.g. with the table's own prefix)")
    known = pd.Index(pq.read_table(raw_dir / "customers.parquet", columns=[CUSTOMER_ID]).column(0).to_pandas())
    stamps = pq.read_table(profile, columns=[EVENT_TIMESTAMP]).column(0)
    last_snapshot = pd.Timestamp(pa.compute.max(stamps).as_py()).tz_localize(None)
    parts = part_rows(profile)
    writer = StreamingParquetWriter(features_dir)
    reports, footers = [], {}
    try:
        for t in cfg.tables:
            report = TableReport(t.name, t.describe())
            df = prepare_table(read_table(t, chunksize), t, known, last_snapshot, report)
            table, counts = _in_parts(df, len(parts) if parts else None)
            writer.write(t.name, table)
            if counts is not None:
                footers[t.name] = {FEATURE_PARTS_KEY: json.dumps(counts)}
            reports.append(report)
        writer.commit(footers)
    except BaseException:
        writer.abort()
        raise
    return reports


def _in_parts(df: pd.DataFrame, parts: int | None) -> tuple[pa.Table, list[int] | None]:
    """The rows ordered by customer part, customer and time (UTC times), and each part's row count."""
    part = partition_of(df[CUSTOMER_ID].to_numpy(), parts or 1)
    df = df.assign(**{EVENT_TIMESTAMP: df[EVENT_TIMESTAMP].dt.tz_localize("UTC"), "__part": part})
    df = df.sort_values(["__part", CUSTOMER_ID, EVENT_TIMESTAMP], kind="stable").drop(columns="__part")
    fields = [pa.field(CUSTOMER_ID, pa.string()), pa.field(EVENT_TIMESTAMP, pa.timestamp("ns", tz="UTC"))]
    fields += [pa.field(c, pa.float32() if df[c].dtype == np.float32 else pa.string())
               for c in df.columns if c not in (CUSTOMER_ID, EVENT_TIMESTAMP)]
    table = pa.Table.from_pandas(df, schema=pa.schema(fields), preserve_index=False)
    counts = np.bincount(part, minlength=parts).tolist() if parts else None
    return table, counts
