"""Pure parsing of one chunk of `train_ver2.csv`: its dirty strings (padded numbers, every
spelling of NA, mixed codes) into typed arrays, and the reasons rows are rejected."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nextbest.features.adapters import NA_TOKENS
from nextbest.features.adapters.santander.mapping import FLAGS, SantanderMapping

MAX_AGE = 120

# Reasons a row is rejected, in the order they are checked (a row counts under its first).
REJECT_REASONS = ("missing_ncodpers", "bad_ncodpers", "bad_fecha_dato", "bad_product_flag",
                  "no_product_flags", "duplicate_customer_month")

# Flag and customer-number values after parsing.
FLAG_MISSING, FLAG_INVALID = -1, -2
ID_MISSING, ID_INVALID = -1, -2


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
