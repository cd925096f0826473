"""The canonical data model, checked on every load (see docs/data-model.md).

A bad table raises `SchemaError` naming the file, the column, the offending value and its row,
before anything downstream is computed or written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.types as pt

from nextbest.constants import CHANNELS, STATUSES


class SchemaError(ValueError):
    """A raw table breaks the canonical schema."""


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "str" | "float" | "int" | "bool" | "datetime"
    nullable: bool = False
    allowed: tuple[str, ...] | None = None
    min_value: float | None = None


@dataclass(frozen=True)
class TableSchema:
    name: str
    columns: tuple[Column, ...]
    unique: tuple[str, ...] = field(default_factory=tuple)


SCHEMAS: dict[str, TableSchema] = {
    "customers": TableSchema("customers", (
        Column("customer_id", "str"),
        Column("birth_date", "datetime", nullable=True),
        Column("gender", "str", nullable=True),
        Column("region", "str", nullable=True),
        Column("income", "float", nullable=True, min_value=0),
        Column("join_date", "datetime", nullable=True),
        Column("status", "str", allowed=STATUSES),
        Column("marketing_opt_out", "bool"),
        Column("consent_email", "bool"),
        Column("consent_push", "bool"),
        Column("consent_sms", "bool"),
        Column("consent_call", "bool"),
    ), unique=("customer_id",)),
    "holdings": TableSchema("holdings", (
        Column("customer_id", "str"),
        Column("snapshot_date", "datetime"),
        Column("product_id", "str"),
        Column("balance", "float", nullable=True),
    ), unique=("customer_id", "snapshot_date", "product_id")),
    "transactions": TableSchema("transactions", (
        Column("txn_id", "str"),
        Column("customer_id", "str"),
        Column("txn_date", "datetime"),
        Column("posted_date", "datetime"),
        Column("amount", "float", min_value=0),
        Column("direction", "str", allowed=("in", "out")),
        Column("category", "str"),
    )),
    "interactions": TableSchema("interactions", (
        Column("customer_id", "str"),
        Column("event_date", "datetime"),
        Column("event_type", "str"),
        Column("product_id", "str", nullable=True),
        Column("count", "int", min_value=1),
    )),
    "offers": TableSchema("offers", (
        Column("offer_id", "str"),
        Column("customer_id", "str"),
        Column("product_id", "str"),
        Column("channel", "str", allowed=CHANNELS),
        Column("offered_at", "datetime"),
        Column("response", "str", allowed=("accept", "reject", "no_response")),
    ), unique=("offer_id",)),
}

_KIND_CHECK = {
    "str": lambda s: pd.api.types.is_string_dtype(s) or pd.api.types.is_object_dtype(s),
    "float": pd.api.types.is_numeric_dtype,
    "int": pd.api.types.is_integer_dtype,
    "bool": pd.api.types.is_bool_dtype,
    "datetime": pd.api.types.is_datetime64_any_dtype,
}


def _fail(source: str, column: str, row: int, value: object, why: str) -> SchemaError:
    if isinstance(value, np.generic):
        value = value.item()
    return SchemaError(f"{source}: column '{column}', row {row}: value {value!r} {why}")


def validate(df: pd.DataFrame, table: str, source: str | Path = "<memory>",
             products: list[str] | None = None, row_offset: int = 0, unique: bool = True,
             columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Checks one table against the canonical schema and returns it unchanged.

    Args:
        df: the table.
        table: canonical table name (`customers`, `holdings`, ...).
        source: file name used in error messages.
        products: known product ids; product columns must hold one of them.
        row_offset: the file row of `df`'s first row, when `df` is one chunk of a larger file.
        unique: whether to check the table's unique key here (a chunked reader checks it over the
            whole file instead).
        columns: check only these columns (a reader that needs no others); the unique key is
            checked only when all its columns are among them.

    Raises:
        SchemaError: naming the file, column, row and offending value.
    """
    schema = _only(SCHEMAS[table], columns)
    source = str(source)
    missing = [c.name for c in schema.columns if c.name not in df.columns]
    if missing:
        raise SchemaError(f"{source}: missing column(s) {missing} (has {list(df.columns)})")
    for col in schema.columns:
        s = df[col.name]
        if s.isna().all() and len(s) and col.nullable:
            continue
        nulls = s.isna().to_numpy()
        if not col.nullable and nulls.any():
            row = int(np.argmax(nulls))
            raise _fail(source, col.name, row + row_offset, None, "is missing but the column is required")
        if not _KIND_CHECK[col.kind](s):
            bad = _first_bad_type(s, col.kind)
            if bad < 0:  # no single value to blame (an empty table, a column of a foreign type)
                raise SchemaError(f"{source}: column '{col.name}' holds {s.dtype}, not {col.kind}")
            raise _fail(source, col.name, bad + row_offset, s.iloc[bad], f"is not of type {col.kind} (column dtype "
                        f"{s.dtype})")
        allowed = col.allowed
        if col.name == "product_id" and products is not None:
            allowed = tuple(products)
        if allowed is not None:
            bad_mask = ~s.isin(allowed).to_numpy() & ~nulls
            if bad_mask.any():
                row = int(np.argmax(bad_mask))
                raise _fail(source, col.name, row + row_offset, s.iloc[row], f"is not one of {list(allowed)}")
        if col.min_value is not None:
            bad_mask = (s.to_numpy(dtype=float, na_value=np.nan) < col.min_value)
            if bad_mask.any():
                row = int(np.argmax(bad_mask))
                raise _fail(source, col.name, row + row_offset, s.iloc[row],
                            f"is below the minimum {col.min_value}")
    if schema.unique and unique:
        dup = df.duplicated(list(schema.unique)).to_numpy()
        if dup.any():
            row = int(np.argmax(dup))
            raise duplicate_key(source, table, row + row_offset, df.iloc[row])
    return df


def _only(schema: TableSchema, columns: tuple[str, ...] | None) -> TableSchema:
    """The part of `schema` that `columns` covers (all of it when `columns` is None)."""
    if columns is None:
        return schema
    unique = schema.unique if set(schema.unique) <= set(columns) else ()
    return TableSchema(schema.name, tuple(c for c in schema.columns if c.name in columns), unique)


def duplicate_key(source: str | Path, table: str, row: int, values: pd.Series) -> SchemaError:
    """The error for a row whose unique key repeats an earlier row's."""
    cols = list(SCHEMAS[table].unique)
    key = tuple(values[cols])
    return SchemaError(f"{source}: column(s) {cols}, row {row}: duplicate key {key!r}")


def validate_arrow(table, name: str, source: str | Path = "<memory>", products: list[str] | None = None,
                   row_offset: int = 0, columns: tuple[str, ...] | None = None) -> None:
    """`validate` for an Arrow table chunk without converting it to pandas when it is clean.

    Every check runs on Arrow; only a chunk that fails one of them (or that Arrow cannot judge) goes
    through `validate`, so the error is the same, naming file, column, row and value. Unique keys are
    left to the caller (they span chunks). `columns`: as for `validate`.
    """
    try:
        if _arrow_clean(table, _only(SCHEMAS[name], columns), products):
            return
    except pa.ArrowException:  # a type Arrow's kernels do not handle: let pandas judge
        pass
    frame = {}
    for column in table.column_names:
        try:
            frame[column] = table.column(column).to_pandas()
        except (ArithmeticError, ValueError) as exc:  # e.g. a date outside what pandas represents
            raise SchemaError(f"{source}: column '{column}', rows {row_offset}..{row_offset + len(table) - 1}: "
                              f"{exc}") from None
    validate(pd.DataFrame(frame), name, source=source, products=products, row_offset=row_offset, unique=False,
             columns=columns)


_ARROW_KIND = {
    "str": lambda t: pt.is_string(t) or pt.is_large_string(t),
    "float": lambda t: pt.is_integer(t) or pt.is_floating(t),
    "int": pt.is_integer,
    "bool": pt.is_boolean,
    "datetime": pt.is_timestamp,
}


def _arrow_clean(table, schema: TableSchema, products) -> bool:
    """True when the chunk certainly passes every per-row check of `validate`."""
    for col in schema.columns:
        if col.name not in table.column_names:
            return False
        arr = table.column(col.name)
        if pt.is_dictionary(arr.type):
            arr = arr.cast(arr.type.value_type)
        if not _ARROW_KIND[col.kind](arr.type) and not pt.is_null(arr.type):
            return False
        if not len(arr):
            continue
        if arr.null_count and (not col.nullable or col.kind in ("int", "bool")):
            return False  # pandas turns nulls in int/bool columns into float/object: let it judge
        if pt.is_floating(arr.type) and not col.nullable and pc.any(pc.is_nan(arr)).as_py():
            return False
        allowed = tuple(products) if col.name == "product_id" and products is not None else col.allowed
        if allowed is not None:
            present = pc.unique(arr.drop_null())
            known = pa.array(list(allowed), type=pa.string())
            if len(present) and not pc.all(pc.is_in(present, value_set=known)).as_py():
                return False
        if col.min_value is not None:
            low = pc.min(arr).as_py()
            if low is not None and low < col.min_value:
                return False
        if pt.is_timestamp(arr.type) and arr.null_count < len(arr):
            bounds = pc.min_max(pc.cast(arr, pa.timestamp("us", tz=arr.type.tz), safe=False))
            if not (PANDAS_MIN_US <= bounds["min"].value <= PANDAS_MAX_US and
                    PANDAS_MIN_US <= bounds["max"].value <= PANDAS_MAX_US):
                return False
    return True


# The datetimes pandas represents (nanoseconds in int64), in microseconds.
PANDAS_MIN_US = pd.Timestamp.min.value // 1000 + 1
PANDAS_MAX_US = pd.Timestamp.max.value // 1000 - 1


def _first_bad_type(s: pd.Series, kind: str) -> int:
    """Row of the first value that does not convert to `kind`, or -1 if none is found."""
    converters = {
        "float": lambda v: float(v),
        "int": lambda v: int(v) if float(v).is_integer() else (_ for _ in ()).throw(ValueError()),
        "bool": lambda v: v if isinstance(v, (bool, np.bool_)) else (_ for _ in ()).throw(ValueError()),
        "datetime": lambda v: pd.Timestamp(v),
        "str": lambda v: v if isinstance(v, str) else (_ for _ in ()).throw(ValueError()),
    }
    conv = converters[kind]
    for i, v in enumerate(s.to_numpy()):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            continue
        try:
            conv(v)
        except (TypeError, ValueError):
            return i
    return -1
