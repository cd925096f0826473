"""Kaggle "Santander Product Recommendation" (`train_ver2.csv`) -> the canonical raw tables.

The file has one row per customer (`ncodpers`) and month (`fecha_dato`, e.g. 2015-01-28) with
the customer's profile and 24 product flags: 13.6M rows, 2.3 GB, 2015-01 to 2016-05. It is
streamed in chunks, so memory is set by the chunk size plus a few values per customer (never by
the number of rows): ~770 MB peak for a synthetic file of the real size (13.2M rows, 911,000
customers) at the default chunk size (benchmarks/bench_santander_ingest.py).

What is written (each table validated with `nextbest.schema.validate`):

- `holdings.parquet`: one row per customer, month-end snapshot and product held (flag == 1),
  the 24 flags mapped onto our catalogue by `configs/adapters/santander_products.yaml`; flags
  that map to the same product give one row. `balance` is missing: the data set has none.
- `customers.parquet`: one row per customer with the latest value seen of each attribute (the
  latest non-missing one: `renta` is empty in some months only):
  `birth_date` from `age` (midpoint estimate, see `approx_birth_date`), `gender` from `sexo`
  through the mapping file (codes kept as recorded by default: their meaning is not documented),
  `region` from `nomprov`, `income` from `renta`, `join_date` from `fecha_alta`, `status` from
  the latest snapshot (see `derive_status`). The data set records no consent, so
  `marketing_opt_out` is False and every `consent_*` is False: the privacy-safe default, which
  leaves only our own channels (app, web, branch) open until a bank supplies its consents.
- `transactions`, `interactions`, `offers`: empty tables with the right columns; the data set has
  none, and an empty table replaces any left over from an earlier run.

Rows are rejected, and counted under the first reason that applies, when `ncodpers` is missing
or not an integer, `fecha_dato` is not a date, a product flag is neither 0, 1 nor missing, no
product flag is given at all (a truncated line reads that way: pandas pads short lines with empty
fields), or the same customer and month appeared earlier in the file (the first row wins). A
line with too many fields stops the ingest with its line number: its columns cannot be trusted.
A missing flag (the real file has some for `ind_nomina_ult1`, `ind_nom_pens_ult1`) is read as
"not held": holdings only record what is known to be held. Unusable profile values (age not a number or outside
[0, 120], unparseable `renta` or `fecha_alta`, negative income) keep the row and become missing;
they are counted in `IngestReport.values_nulled`. Months missing for a customer are not filled
in: that customer held nothing known that month.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nextbest.config import Catalogue, ConfigError
from nextbest.features.adapters import (NA_TOKENS, IngestReport, approx_birth_date, arrow_schema, empty_table,
                                        parser_error_detail, require_columns)
from nextbest.schema import SchemaError, validate
from nextbest.io import StreamingParquetWriter
from nextbest.settings import config_file

FLAGS = (
    "ind_ahor_fin_ult1", "ind_aval_fin_ult1", "ind_cco_fin_ult1", "ind_cder_fin_ult1", "ind_cno_fin_ult1",
    "ind_ctju_fin_ult1", "ind_ctma_fin_ult1", "ind_ctop_fin_ult1", "ind_ctpp_fin_ult1", "ind_deco_fin_ult1",
    "ind_deme_fin_ult1", "ind_dela_fin_ult1", "ind_ecue_fin_ult1", "ind_fond_fin_ult1", "ind_hip_fin_ult1",
    "ind_plan_fin_ult1", "ind_pres_fin_ult1", "ind_reca_fin_ult1", "ind_tjcr_fin_ult1", "ind_valo_fin_ult1",
    "ind_viv_fin_ult1", "ind_nomina_ult1", "ind_nom_pens_ult1", "ind_recibo_ult1",
)
PROFILE_COLUMNS = ("sexo", "age", "fecha_alta", "nomprov", "ind_actividad_cliente", "renta")
REQUIRED_COLUMNS = ("fecha_dato", "ncodpers", *PROFILE_COLUMNS, *FLAGS)
# Nearly one distinct value per row: plain text (categories would be sorted for nothing).
_HIGH_CARDINALITY = ("ncodpers", "renta")
_READ_DTYPES: defaultdict[str, Any] = defaultdict(lambda: "category", {c: str for c in _HIGH_CARDINALITY})
DEFAULT_MAPPING = "adapters/santander_products.yaml"  # a config name: the project's, else the package default
DEFAULT_CHUNKSIZE = 500_000
MAX_AGE = 120
UNKNOWN_GENDER = "unknown"

# Reasons a row is rejected, in the order they are checked (a row counts under its first).
REJECT_REASONS = ("missing_ncodpers", "bad_ncodpers", "bad_fecha_dato", "bad_product_flag",
                  "no_product_flags", "duplicate_customer_month")
_DUPLICATE = REJECT_REASONS.index("duplicate_customer_month") + 1

# Flag and customer-number values after parsing.
FLAG_MISSING, FLAG_INVALID = -1, -2
ID_MISSING, ID_INVALID = -1, -2


# -- mapping file ------------------------------------------------------------------------------

class SantanderMapping(BaseModel):
    """`configs/adapters/santander_products.yaml`: product flags -> product ids, `sexo` codes -> gender."""

    model_config = ConfigDict(extra="forbid")

    version: int
    products: dict[str, str | None]
    gender: dict[str, str] = Field(default_factory=dict)

    def matrix(self, product_ids: list[str]) -> np.ndarray:
        """bool [24 flags, n products]: True where a flag maps to a product (flags in `FLAGS` order)."""
        out = np.zeros((len(FLAGS), len(product_ids)), dtype=bool)
        pos = {p: j for j, p in enumerate(product_ids)}
        for i, flag in enumerate(FLAGS):
            target = self.products[flag]
            if target is not None:
                out[i, pos[target]] = True
        return out


def load_santander_mapping(catalogue: Catalogue, path: Path | None = None) -> SantanderMapping:
    """Loads the flag -> product mapping and checks it against the catalogue.

    Raises:
        ConfigError: the file is missing or invalid, a flag is missing or unknown, or a product
            id is not in `configs/products.yaml` (the message names the file and the key).
    """
    path = Path(path or config_file(DEFAULT_MAPPING))
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        mapping = SantanderMapping.model_validate(data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise ConfigError(f"{path}: field {where}: {first['msg']} (got {first.get('input')!r})") from None
    missing = [f for f in FLAGS if f not in mapping.products]
    if missing:
        raise ConfigError(f"{path}: field products: no mapping for flag(s) {missing} (map a flag to null to ignore it)")
    unknown = [f for f in mapping.products if f not in FLAGS]
    if unknown:
        raise ConfigError(f"{path}: field products: unknown flag(s) {unknown}; the flags are {list(FLAGS)}")
    ids = set(catalogue.ids)
    for flag, target in mapping.products.items():
        if target is not None and target not in ids:
            raise ConfigError(f"{path}: field products.{flag}: product_id {target!r} is not in configs/products.yaml")
    return mapping


# -- pure parsing helpers -----------------------------------------------------------------------

def _per_unique(values: pd.Series, fn: Callable[[pd.Series], np.ndarray]) -> np.ndarray:
    """Applies `fn` to the distinct values only and spreads the result back to every row.

    A month of the real file has ~50 distinct ages and 2 flag spellings among 900,000 rows, so
    parsing each distinct string once is what makes the dirty-string handling cheap.
    """
    if isinstance(values.dtype, pd.CategoricalDtype):
        codes = values.cat.codes.to_numpy()
        uniques = pd.Series(np.asarray(values.cat.categories, dtype=object), dtype=object)
    else:
        codes, uniq = pd.factorize(values, use_na_sentinel=True)
        uniques = pd.Series(np.asarray(uniq, dtype=object), dtype=object)
    # A trailing None receives the codes of missing values (-1 indexes the last element).
    parsed = np.asarray(fn(pd.concat([uniques, pd.Series([None], dtype=object)], ignore_index=True)))
    return parsed[codes]


def _clean(values: pd.Series) -> pd.Series:
    """Blanks stripped ("  NA" -> "NA") and every spelling of missing turned into None."""
    s = values.astype(object).where(values.notna(), "").astype(str).str.strip()
    return s.where(~s.isin(NA_TOKENS), None)


def clean_text(values: pd.Series) -> np.ndarray:
    """Text as recorded, stripped; None where missing (`""`, `"NA"`, `"  NA"`, ...)."""
    return _per_unique(values, lambda u: _clean(u).to_numpy(dtype=object))


def parse_number(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Numbers stored as padded strings (`" 35"`, `"  NA"`, `"87218.1"`, `"1.0"`).

    Returns:
        (float values with NaN where missing or unusable, bool mask of values that were present
        but not a finite number).
    """
    def parse(u: pd.Series) -> np.ndarray:
        s = _clean(u)
        num = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float)
        bad = s.notna().to_numpy() & ~np.isfinite(num)
        return np.stack([np.where(np.isfinite(num), num, np.nan), bad.astype(float)], axis=1)

    out = _per_unique(values, parse)
    return out[:, 0], out[:, 1].astype(bool)


def parse_flag(values: pd.Series) -> np.ndarray:
    """Product flags: int8 1 or 0, `FLAG_MISSING` (-1) for NA or empty, `FLAG_INVALID` (-2) otherwise."""
    num, bad = parse_number(values)
    out = np.full(len(num), FLAG_INVALID, dtype=np.int8)
    out[num == 0] = 0
    out[num == 1] = 1
    out[np.isnan(num) & ~bad] = FLAG_MISSING
    return out


def parse_customer_number(values: pd.Series) -> np.ndarray:
    """Customer numbers (`ncodpers`): int64, `ID_MISSING` (-1) where empty or NA, `ID_INVALID`
    (-2) where not a non-negative integer (`"1375586"`, `" 15889"` and `"15889.0"` are fine).
    """
    def parse(u: pd.Series) -> np.ndarray:
        s = _clean(u)
        # Parsed as text, not float, so that long keys keep every digit.
        valid = s.fillna("").str.fullmatch(r"\d{1,18}(?:\.0*)?").to_numpy(dtype=bool)
        out = np.where(s.isna().to_numpy(), ID_MISSING, ID_INVALID).astype(np.int64)
        out[valid] = s[valid].str.split(".").str[0].astype(np.int64).to_numpy()
        return out

    return _per_unique(values, parse)


def parse_date(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """ISO dates (`2015-01-28`), possibly padded.

    Returns:
        (datetime64[ns] with NaT where missing or unparseable, bool mask of present but
        unparseable values).
    """
    def parse(u: pd.Series) -> np.ndarray:
        s = _clean(u)
        dates = pd.to_datetime(s, format="%Y-%m-%d", errors="coerce")
        bad = s.notna() & dates.isna()
        return np.stack([dates.to_numpy(dtype="datetime64[ns]").view(np.int64), bad.to_numpy().astype(np.int64)],
                        axis=1)

    out = _per_unique(values, parse)
    return out[:, 0].view("datetime64[ns]"), out[:, 1].astype(bool)


def month_end(dates: np.ndarray) -> np.ndarray:
    """The last day of each date's month (`2015-01-28` -> `2015-01-31`), datetime64[ns]; NaT stays NaT."""
    months = np.asarray(dates, dtype="datetime64[ns]").astype("datetime64[M]")
    return ((months + 1).astype("datetime64[D]") - np.timedelta64(1, "D")).astype("datetime64[ns]")


def month_number(dates: np.ndarray) -> np.ndarray:
    """Months since 1970-01 (int32), -1 for NaT: a compact, ordered key for a monthly snapshot."""
    dates = np.asarray(dates, dtype="datetime64[ns]")
    out = dates.astype("datetime64[M]").astype(np.int64)
    return np.where(np.isnat(dates), -1, out).astype(np.int32)


def derive_status(last_month: np.ndarray, final_month: int, active: np.ndarray, held_now: np.ndarray,
                  ever_held: np.ndarray) -> np.ndarray:
    """Lifecycle status of each customer as of the file's last snapshot.

    A customer present in the last snapshot is `active` if `ind_actividad_cliente` was 1 there,
    else `dormant` if holding a product, else `former` if some product was held before, else
    `prospect`. A customer absent from the last snapshot has left the file, so holds nothing
    then: `former` if a product was ever held, else `prospect`.

    Args:
        last_month: month number of each customer's latest row.
        final_month: month number of the file's last snapshot.
        active: `ind_actividad_cliente` at the latest row (1 active; 0 or -1 missing otherwise).
        held_now: number of products held at the latest row.
        ever_held: whether any product was held in any kept row.

    Returns:
        object array of statuses.
    """
    present = np.asarray(last_month) == final_month
    return np.select(
        [present & (np.asarray(active) == 1), present & (np.asarray(held_now) > 0), np.asarray(ever_held)],
        ["active", "dormant", "former"], default="prospect").astype(object)


@dataclass
class ParsedChunk:
    """One chunk of the file, parsed: one entry per row (pure data, no state)."""

    reason: np.ndarray  # int8: 0 kept, i + 1 for REJECT_REASONS[i]
    ncodpers: np.ndarray  # int64, -1 where unusable
    snapshot: np.ndarray  # datetime64[ns] month end, NaT where unusable
    month: np.ndarray  # int32 month number, -1 where unusable
    flags: np.ndarray  # int8 [rows, 24], FLAGS order
    age: np.ndarray  # float, NaN where missing or out of range
    gender: np.ndarray  # object: mapped code, None where missing or unlisted
    region: np.ndarray  # object, None where missing
    income: np.ndarray  # float, NaN where missing or unusable
    join_date: np.ndarray  # datetime64[ns], NaT where missing or unusable
    active: np.ndarray  # int8: 1, 0, or -1 where missing
    nulled: dict[str, int]  # source column -> values present but unusable


def parse_chunk(chunk: pd.DataFrame, mapping: SantanderMapping) -> ParsedChunk:
    """Parses the dirty strings of one chunk and decides which rows are rejected (except duplicates,
    which need the state of earlier chunks).
    """
    n = len(chunk)
    ncod = parse_customer_number(chunk["ncodpers"])
    dato, _ = parse_date(chunk["fecha_dato"])
    flags = np.stack([parse_flag(chunk[f]) for f in FLAGS], axis=1) if n else np.zeros((0, len(FLAGS)), np.int8)

    reason = np.zeros(n, dtype=np.int8)
    checks = (ncod == ID_MISSING, ncod == ID_INVALID, np.isnat(dato), (flags == FLAG_INVALID).any(axis=1),
              (flags == FLAG_MISSING).all(axis=1))
    # Assigned from last to first so that each row keeps its first reason.
    for code, failed in reversed(list(enumerate(checks, start=1))):
        reason[failed] = code

    nulled: dict[str, int] = {}
    age, bad = parse_number(chunk["age"])
    out_of_range = np.isfinite(age) & ((age < 0) | (age > MAX_AGE))
    nulled["age"] = int((bad | out_of_range).sum())
    age = np.where(out_of_range, np.nan, np.floor(age))

    income, bad = parse_number(chunk["renta"])
    negative = income < 0
    nulled["renta"] = int((bad | negative).sum())
    income = np.where(negative, np.nan, income)

    join_date, bad = parse_date(chunk["fecha_alta"])
    nulled["fecha_alta"] = int(bad.sum())

    active_num, bad = parse_number(chunk["ind_actividad_cliente"])
    active = np.where(active_num == 1, 1, np.where(active_num == 0, 0, -1)).astype(np.int8)
    nulled["ind_actividad_cliente"] = int((bad | (np.isfinite(active_num) & (active == -1))).sum())

    sexo = clean_text(chunk["sexo"])
    mapped = pd.Series(sexo, dtype=object).map(mapping.gender)
    gender = mapped.astype(object).where(mapped.notna(), None).to_numpy(dtype=object)
    nulled["sexo"] = int((pd.notna(sexo) & mapped.isna().to_numpy()).sum())

    return ParsedChunk(
        reason=reason,
        ncodpers=np.where(ncod >= 0, ncod, -1),
        snapshot=month_end(dato), month=month_number(dato), flags=flags, age=age, gender=gender,
        region=clean_text(chunk["nomprov"]), income=income, join_date=join_date, active=active,
        nulled={k: v for k, v in nulled.items() if v})


# -- state across chunks: one slot per customer, never rows -------------------------------------

def _latest_rows(cidx: np.ndarray, month: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Positions of each customer's latest-month row among the rows in `mask`."""
    rows = np.flatnonzero(mask)
    if not len(rows):
        return rows
    rows = rows[np.lexsort((month[rows], cidx[rows]))]
    c = cidx[rows]
    last = np.ones(len(rows), dtype=bool)
    last[:-1] = c[1:] != c[:-1]
    return rows[last]


class _CustomerState:
    """Per-customer arrays: the latest value of each attribute and the month it was seen in.

    68 bytes per customer, one byte per customer and month for duplicate detection, and the id
    lookup: about 250 MB at the peak for the ~950,000 customers and 17 months of the real file,
    including the customers table built at the end.
    """

    _FIELDS: dict[str, tuple[Any, Any]] = {  # name -> (dtype, fill)
        "ids": (np.int64, -1),
        "last_month": (np.int32, -1), "active": (np.int8, -1), "held_now": (np.int16, 0),
        "ever_held": (np.bool_, False),
        "birth_month": (np.int32, -1), "birth": ("datetime64[ns]", np.datetime64("NaT")),
        "gender_month": (np.int32, -1), "gender": (np.int32, -1),
        "region_month": (np.int32, -1), "region": (np.int32, -1),
        "income_month": (np.int32, -1), "income": (np.float64, np.nan),
        "join_month": (np.int32, -1), "join": ("datetime64[ns]", np.datetime64("NaT")),
    }

    def __init__(self) -> None:
        self.n = 0
        self.a = {k: np.full(0, fill, dtype=dt) for k, (dt, fill) in self._FIELDS.items()}
        self.seen: dict[int, np.ndarray] = {}  # month number -> bool [capacity]
        self._index = pd.Index(np.empty(0, np.int64))
        self.vocab: dict[str, dict[str, int]] = {"gender": {}, "region": {}}

    def _grow(self, need: int) -> None:
        cap = len(self.a["ids"])
        if need <= cap:
            return
        new = max(need, 2 * cap, 1024)
        for k, (dt, fill) in self._FIELDS.items():
            self.a[k] = np.concatenate([self.a[k], np.full(new - cap, fill, dtype=dt)])
        for m in self.seen:
            self.seen[m] = np.concatenate([self.seen[m], np.zeros(new - cap, dtype=bool)])

    def register(self, ncodpers: np.ndarray) -> np.ndarray:
        """Slot of each customer number, adding the new ones."""
        uniq, inverse = np.unique(ncodpers, return_inverse=True)
        pos = self._index.get_indexer(uniq)
        new = pos < 0
        if new.any():
            k = int(new.sum())
            self._grow(self.n + k)
            pos[new] = np.arange(self.n, self.n + k)
            self.a["ids"][self.n:self.n + k] = uniq[new]
            self.n += k
            self._index = pd.Index(self.a["ids"][:self.n])
        return pos[inverse]

    def duplicates(self, cidx: np.ndarray, month: np.ndarray) -> np.ndarray:
        """Marks (customer, month) pairs as seen; True for pairs seen before (in this or an earlier chunk)."""
        key = pd.Series(cidx.astype(np.int64) * 65536 + month)
        dup = key.duplicated(keep="first").to_numpy()
        for m in np.unique(month):
            seen = self.seen.setdefault(int(m), np.zeros(len(self.a["ids"]), dtype=bool))
            rows = np.flatnonzero(month == m)
            dup[rows] |= seen[cidx[rows]]
            seen[cidx[rows]] = True
        return dup

    def codes(self, name: str, values: np.ndarray) -> np.ndarray:
        """Small-vocabulary codes for text (genders, provinces); -1 for None."""
        codes, uniques = pd.factorize(pd.Series(values, dtype=object), use_na_sentinel=True)
        vocab = self.vocab[name]
        lookup = np.array([vocab.setdefault(u, len(vocab)) for u in uniques] + [-1], dtype=np.int32)
        return lookup[codes]

    def update(self, name: str, cidx: np.ndarray, month: np.ndarray, values: np.ndarray, valid: np.ndarray) -> None:
        """Keeps, per customer, the value of the latest month in which it was valid."""
        rows = _latest_rows(cidx, month, valid)
        c = cidx[rows]
        newer = month[rows] > self.a[f"{name}_month"][c]
        self.a[f"{name}_month"][c[newer]] = month[rows[newer]]
        self.a[name][c[newer]] = values[rows[newer]]

    def customers(self) -> pd.DataFrame:
        """The canonical customers table, ordered by customer number."""
        n, a = self.n, {k: v[:self.n] for k, v in self.a.items()}
        order = np.argsort(a["ids"], kind="stable")
        a = {k: v[order] for k, v in a.items()}
        final_month = int(a["last_month"].max()) if n else -1
        genders = np.array([*self.vocab["gender"], UNKNOWN_GENDER], dtype=object)
        regions = np.array([*self.vocab["region"], None], dtype=object)
        false = np.zeros(n, dtype=bool)
        return pd.DataFrame({
            "customer_id": a["ids"].astype(str).astype(object),
            "birth_date": a["birth"],
            "gender": genders[a["gender"]],
            "region": regions[a["region"]],
            "income": a["income"],
            "join_date": a["join"],
            "status": derive_status(a["last_month"], final_month, a["active"], a["held_now"], a["ever_held"]),
            "marketing_opt_out": false,
            # No consent is recorded in the data set: fail closed (see the module docstring).
            "consent_email": false.copy(), "consent_push": false.copy(),
            "consent_sms": false.copy(), "consent_call": false.copy(),
        })


def _holdings_frame(parsed: ParsedChunk, keep: np.ndarray, held: np.ndarray, products: list[str]) -> pd.DataFrame:
    rows, cols = np.nonzero(held)
    src = np.flatnonzero(keep)[rows]
    return pd.DataFrame({
        "customer_id": pd.Series(parsed.ncodpers[src]).astype(str),
        "snapshot_date": parsed.snapshot[src],
        "product_id": np.asarray(products, dtype=object)[cols],
        "balance": np.full(len(src), np.nan),
    })


# -- the I/O edge --------------------------------------------------------------------------------

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
    state = _CustomerState()
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
                  state: _CustomerState, report: IngestReport, writer: StreamingParquetWriter,
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

    rows = _latest_rows(cidx, month, keep)
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
