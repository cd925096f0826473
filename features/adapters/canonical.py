"""A bank's own canonical tables, from files or a database: `nextbest ingest canonical --from SOURCE`.

SOURCE is a folder holding `<table>.parquet` or `<table>.csv` (or `.csv.gz`) for each canonical
table, or a SQLAlchemy database URL (`postgresql://user@host:5432/bank`), whose tables are read
with `SELECT *` (table names default to the canonical ones; `--table customers=crm.clients` maps
another). `customers` and `holdings` are required; `transactions`, `interactions` and `offers`
are written empty when the source has none, and the report says so.

Every table is read in chunks, its values converted to the column's kind (text ids stay text;
dates, numbers and flags are parsed), validated (a bad value names the source, column, row and
value), and written through a staging folder: nothing in `raw/` changes unless every table
succeeded. Columns beyond the canonical ones are ignored and reported.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from nextbest.config import Catalogue
from nextbest.constants import SNAPSHOT_DATE
from nextbest.features.adapters import NA_TOKENS, IngestReport, arrow_schema, empty_table
from nextbest.io import RAW_TABLES, StreamingParquetWriter
from nextbest.schema import SCHEMAS, SchemaError, validate

REQUIRED = ("customers", "holdings")
TRUE = {"true", "t", "yes", "y", "1", "1.0"}
FALSE = {"false", "f", "no", "n", "0", "0.0"}


def is_database_url(source: str) -> bool:
    return "://" in str(source)


def parse_table_names(pairs: list[str] | None) -> dict[str, str]:
    """["customers=crm.clients", ...] -> {"customers": "crm.clients"}; an unknown table is an error."""
    out = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not value.strip() or name.strip() not in RAW_TABLES:
            raise SchemaError(f"--table {pair!r}: expected TABLE=NAME with TABLE one of {list(RAW_TABLES)}")
        out[name.strip()] = value.strip()
    return out


def coerce(df: pd.DataFrame, table: str, source: str, row_offset: int) -> pd.DataFrame:
    """The canonical columns of `df`, each converted to its kind; an unparseable value is an error naming
    the source, column, row and value."""
    out = {}
    for col in SCHEMAS[table].columns:
        if col.name not in df.columns:
            continue  # `validate` names every missing column at once
        s = df[col.name]
        out[col.name] = convert_column(s, col.kind, source, col.name, row_offset)
    return pd.DataFrame(out)


def _bad(source: str, column: str, row: int, value, kind: str) -> SchemaError:
    return SchemaError(f"{source}: column '{column}', row {row}: value {value!r} is not of type {kind}")


def convert_column(s: pd.Series, kind: str, source: str, column: str, row_offset: int) -> pd.Series:
    """One column converted to its kind (`str`, `datetime` as naive UTC, `float`, `int`, `bool`); an unparseable
    value is a SchemaError naming the source, column, row (`row_offset` + its place) and value."""
    s = s.reset_index(drop=True)
    text = s.dtype == object or pd.api.types.is_string_dtype(s)
    missing = s.isna() | (s.astype(str).str.strip().isin(NA_TOKENS) if text else False)
    if kind == "str":
        if not text and pd.api.types.is_float_dtype(s):  # ids read as numbers: 1001.0 -> "1001"
            whole = s.dropna() == np.floor(s.dropna())
            s = s.map(lambda v: None if pd.isna(v) else (str(int(v)) if whole.all() else str(v)))
        return s.map(lambda v: None if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v).strip()) \
            .where(~missing, None).astype(object)
    if kind == "datetime":
        if pd.api.types.is_datetime64_any_dtype(s):
            s = s.dt.tz_convert("UTC").dt.tz_localize(None) if getattr(s.dt, "tz", None) else s
            outside = s.notna() & ((s < pd.Timestamp.min) | (s > pd.Timestamp.max))  # beyond nanoseconds' range
            if outside.any():
                i = int(np.argmax(outside.to_numpy()))
                raise SchemaError(f"{source}: column '{column}', row {row_offset + i}: value {s.iloc[i]} is outside "
                                  f"{pd.Timestamp.min.date()}..{pd.Timestamp.max.date()}")
            return s.astype("datetime64[ns]")
        parsed = pd.to_datetime(s.where(~missing), errors="coerce", utc=True, format="mixed")
        bad = parsed.isna() & ~missing
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise _bad(source, column, row_offset + i, s.iloc[i], kind)
        return parsed.dt.tz_localize(None).astype("datetime64[ns]")
    if kind in ("float", "int"):
        if pd.api.types.is_bool_dtype(s):
            s = s.astype(int)
        values = pd.to_numeric(s.where(~missing), errors="coerce")  # Decimal and text numbers alike
        bad = values.isna() & ~missing
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise _bad(source, column, row_offset + i, s.iloc[i], kind)
        if kind == "int":
            frac = values.notna() & (values != np.floor(values))
            if frac.any():
                i = int(np.argmax(frac.to_numpy()))
                raise _bad(source, column, row_offset + i, s.iloc[i], kind)
            return values.astype("Int64").astype("int64") if not values.isna().any() else values
        return values.astype("float64")
    if kind == "bool":
        if pd.api.types.is_bool_dtype(s) and not s.isna().any():
            return s
        lowered = s.astype(str).str.strip().str.lower()
        ok = lowered.isin(TRUE | FALSE) | missing
        if not ok.all():
            i = int(np.argmax(~ok.to_numpy()))
            raise _bad(source, column, row_offset + i, s.iloc[i], kind)
        return lowered.isin(TRUE).where(~missing, None) if missing.any() else lowered.isin(TRUE)
    raise ValueError(kind)


class _Files:
    """Tables as files in a folder."""

    def __init__(self, folder: Path, names: dict[str, str], encoding: str, chunksize: int):
        if not folder.exists():
            raise SchemaError(f"{folder}: folder not found")
        if not folder.is_dir():
            raise SchemaError(f"{folder}: not a folder (expected one holding <table>.parquet or <table>.csv)")
        self.folder, self.names, self.encoding, self.chunksize = folder, names, encoding, chunksize

    def locate(self, table: str) -> Path | None:
        stem = self.names.get(table, table)
        for suffix in (".parquet", ".csv", ".csv.gz"):
            path = self.folder / f"{stem}{suffix}"
            if path.exists():
                return path
        return None

    def chunks(self, table: str) -> Iterator[pd.DataFrame]:
        path = self.locate(table)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                pf = pq.ParquetFile(path)
                for batch in pf.iter_batches(batch_size=self.chunksize):
                    yield pa.Table.from_batches([batch]).to_pandas()
            except (OSError, pa.ArrowInvalid) as exc:
                raise SchemaError(f"{path}: not a readable parquet file ({exc})") from None
            return
        yield from csv_chunks(path, self.encoding, self.chunksize)


def csv_chunks(path: Path, encoding: str, chunksize: int,
               advice: str = "pass --encoding, for example --encoding latin-1") -> Iterator[pd.DataFrame]:
    """A CSV file as chunks of text columns; an undecodable byte, an empty or malformed file is a SchemaError
    (the first names the byte's offset and gives `advice`, how to choose another encoding)."""
    try:
        for chunk in pd.read_csv(path, dtype=str, keep_default_na=False, encoding=encoding, chunksize=chunksize):
            yield chunk
    except UnicodeDecodeError as exc:
        at = _first_undecodable(path, encoding)
        raise SchemaError(f"{path}: not valid {encoding} at byte {at if at is not None else '?'} ({exc.reason}); "
                          f"{advice}") from None
    except pd.errors.EmptyDataError:
        raise SchemaError(f"{path}: empty file, expected a header with the table's columns") from None
    except pd.errors.ParserError as exc:
        raise SchemaError(f"{path}: malformed CSV ({str(exc).strip()})") from None


def _first_undecodable(path: Path, encoding: str) -> int | None:
    """The file's offset of the first byte that does not decode (the parser only knows its own buffer's)."""
    import codecs
    import gzip

    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        while block := f.read(1 << 20):
            pending = decoder.getstate()[0]
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                return offset - len(pending) + exc.start
            offset += len(block)
    return None


class Database:
    """Tables in a database reached through SQLAlchemy."""

    def __init__(self, url: str, names: dict[str, str], chunksize: int, setting: str = "--from"):
        import re

        import sqlalchemy as sa

        try:
            parsed = sa.engine.make_url(url)
        except sa.exc.ArgumentError:
            shown = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)  # never a password in a message
            raise SchemaError(f"{setting} {shown!r}: not a database URL (expected e.g. "
                              "postgresql://user@host:5432/bank)") from None
        if parsed.drivername == "postgresql":  # the driver installed with nextbest[postgres]
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.shown = parsed.render_as_string(hide_password=True)
        try:
            self.engine = sa.create_engine(parsed)
            self.conn = self.engine.connect()
        except (sa.exc.SQLAlchemyError, ImportError) as exc:
            raise SchemaError(f"{self.shown}: cannot connect ({_first_line(exc)})") from None
        self.inspector = sa.inspect(self.conn)
        self.names, self.chunksize, self.sa = names, chunksize, sa

    def close(self) -> None:
        self.conn.close()
        self.engine.dispose()

    def _split(self, table: str) -> tuple[str | None, str]:
        name = self.names.get(table, table)
        schema, _, bare = name.rpartition(".")
        return schema or None, bare

    def locate(self, table: str) -> str | None:
        schema, bare = self._split(table)
        return f"{self.shown} table {self.names.get(table, table)}" if self.inspector.has_table(bare, schema=schema) \
            else None

    def chunks(self, table: str) -> Iterator[pd.DataFrame]:
        schema, bare = self._split(table)
        t = self.sa.Table(bare, self.sa.MetaData(), schema=schema, autoload_with=self.conn)
        # A server-side cursor: rows arrive chunk by chunk, not all at once.
        conn = self.conn.execution_options(stream_results=True, max_row_buffer=self.chunksize)
        try:
            yield from pd.read_sql_query(self.sa.select(t), conn, chunksize=self.chunksize)
        except self.sa.exc.SQLAlchemyError as exc:
            raise SchemaError(f"{self.locate(table)}: cannot be read ({_first_line(exc)})") from None

    def query_chunks(self, query: str) -> Iterator[pd.DataFrame]:
        """The rows of a SELECT, chunk by chunk."""
        conn = self.conn.execution_options(stream_results=True, max_row_buffer=self.chunksize)
        try:
            yield from pd.read_sql_query(self.sa.text(query), conn, chunksize=self.chunksize)
        except self.sa.exc.SQLAlchemyError as exc:
            raise SchemaError(f"{self.shown} query: cannot be read ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def ingest_canonical(source: str | Path, out_dir: Path, catalogue: Catalogue, table_names: dict[str, str] | None = None,
                     encoding: str = "utf-8", chunksize: int = 500_000) -> IngestReport:
    """Reads, converts, validates and writes the canonical tables from `source` (see the module's docstring).

    Raises:
        SchemaError: a required table is missing, a value breaks the schema, or the source cannot be read;
            `raw/` is then left as it was.
    """
    from nextbest.features.split import check_unique

    names = table_names or {}
    reader = Database(str(source), names, chunksize) if is_database_url(str(source)) else \
        _Files(Path(source), names, encoding, chunksize)
    report = IngestReport(source=Path(str(getattr(reader, "shown", source))))
    staging = out_dir / f".ingest-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    writer = StreamingParquetWriter(staging)
    months: set = set()
    sources: dict[str, str | Path] = {}
    try:
        for table in RAW_TABLES:
            where = reader.locate(table)
            if where is None:
                if table in REQUIRED:
                    wanted = names.get(table, table)
                    raise SchemaError(f"{source}: no {table} table (looked for {wanted!r}"
                                      + ("" if is_database_url(str(source)) else
                                         f" as {wanted}.parquet, {wanted}.csv or {wanted}.csv.gz") + ")")
                report.notes.append(f"{table}: none in the source, written empty")
                writer.write(table, pa.Table.from_pandas(empty_table(table), schema=arrow_schema(table),
                                                         preserve_index=False))
                continue
            offset = 0
            for chunk in reader.chunks(table):
                if offset == 0:
                    extra = [c for c in chunk.columns if c not in {c.name for c in SCHEMAS[table].columns}]
                    if extra:
                        report.notes.append(f"{table}: column(s) {extra} are not canonical: ignored")
                missing = [c.name for c in SCHEMAS[table].columns if c.name not in chunk.columns]
                if missing:
                    raise SchemaError(f"{where}: missing column(s) {missing} (has {list(chunk.columns)})")
                frame = coerce(chunk, table, str(where), offset)
                validate(frame, table, source=where, products=catalogue.ids, row_offset=offset, unique=False)
                writer.write(table, pa.Table.from_pandas(frame, schema=arrow_schema(table), preserve_index=False))
                offset += len(frame)
                if table == "holdings":
                    months.update(pd.to_datetime(frame[SNAPSHOT_DATE]).unique())
                if table == "customers":
                    report.customers += len(frame)
            if offset == 0:
                writer.write(table, pa.Table.from_pandas(empty_table(table), schema=arrow_schema(table),
                                                         preserve_index=False))
            report.rows_read += offset
            report.rows_kept += offset
            sources[table] = where
        staged = writer.commit()
        for path in staged:
            check_unique(path, path.stem, source=sources.get(path.stem))
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in staged:
            os.replace(path, out_dir / path.name)
            report.files.append(out_dir / path.name)
    except BaseException:
        writer.abort()
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(reader, Database):
            reader.close()
    report.snapshots = len(months)
    return report


def what_the_data_supports(snapshots: int, horizon_months: int = 3, val_months: int = 1,
                           test_months: int = 1) -> list[str]:
    """What `snapshots` monthly snapshots can train: a split by time, a random split (one or two labelled
    snapshots), or nothing."""
    need = val_months + test_months + 1
    lines = []
    for task, lost in (("nbp (next best product)", 1), (f"churn ({horizon_months}-month horizon)", horizon_months)):
        labelled = max(snapshots - lost, 0)
        if labelled >= need:
            lines.append(f"{task}: {labelled} labelled snapshot(s), enough for the chronological split "
                         f"({need} needed)")
        elif labelled:
            lines.append(f"{task}: {labelled} labelled snapshot(s), fewer than the {need} a split by time needs: "
                         f"training splits the customers at random instead (test figures then say nothing of a "
                         f"later month); load at least {need + lost} monthly snapshots (the data has {snapshots}) "
                         "for a split by time")
        else:
            lines.append(f"{task}: {labelled} labelled snapshot(s), {need} needed: load at least {need + lost} "
                         f"monthly snapshots (the data has {snapshots})"
                         + ("; or give churn labels of your own (label in configs/churn.yaml)" if lost > 1 else ""))
    return lines
