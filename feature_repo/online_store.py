"""A Feast online store in SQLite with one row per (feature view, entity).

Feast's own SQLite store keeps one row per entity *and feature*, each value a serialised
protobuf, so materialising ~250 features for a million customers means a quarter of a billion
inserts (about 1,000 entity rows a second). This store keeps the same file and the same Feast
interfaces (registry, `feast materialize`, `get_online_features`) but packs a view's values for
one entity into one row:

    entity_key BLOB (Feast's serialised key) | event_ts INTEGER (UTC microseconds)
    | layout INTEGER | fixed BLOB | var BLOB

`fixed` holds the numbers as packed little-endian C types (float32 for Float32, float64 for
Float64, the narrowest integer that holds the batch's Int64/Int32 values, one byte per Bool),
then one validity byte per integer/bool column that had missing values in the batch, then the
byte length of each variable-size value. `var` holds the variable-size values back to back:
UTF-8 strings, bytes, and serialised `ValueProto`s for any other Feast type (lists, maps, ...),
which therefore round-trip exactly. Missing floats are NaN, as Feast itself writes them (a NaN
comes back as a null value). The column order and C types of a write are its *layout*, stored
once in `feast_row_layouts` and keyed by a hash of its JSON, so a layout id always means the same
thing, in every process, even after the file is rebuilt.

`write_frame` is the fast path: it encodes a whole Arrow table or DataFrame column by column
with numpy and Arrow kernels (no protobuf per value) and inserts it with `executemany` in one
transaction. `online_write_batch`, which Feast's own materialisation and `write_to_online_store`
call, goes through the same encoder.

Select it in `feature_store.yaml`:

    online_store:
      type: feature_repo.online_store.RowSqliteOnlineStore
      path: /abs/path/online_store.db
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from feast import Entity, FeatureView
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import compute_table_id
from feast.infra.online_stores.online_store import OnlineStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import FeastConfigBaseModel, RepoConfig
from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values
from feast.value_type import ValueType
from pydantic import StrictStr

logger = logging.getLogger(__name__)

STORE_TYPE = "nextbest.feature_repo.online_store.RowSqliteOnlineStore"
LAYOUT_TABLE = "feast_row_layouts"
LAYOUT_VERSION = 1
COLUMNS = ("entity_key", "event_ts", "layout", "fixed", "var")
# Rows encoded and inserted at a time by `write_frame`: bounds memory, not the transaction.
WRITE_CHUNK_ROWS = 200_000
# SQLite's limit on bound parameters is 32766; stay well below it per read.
READ_CHUNK_KEYS = 500
_BUSY_TIMEOUT_S = 60.0  # how long a write waits for another writer (a concurrent materialisation)
NULL_LENGTH = 0xFFFFFFFF  # byte length recorded for a missing variable-size value
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_US = timedelta(microseconds=1)

# Feast value type -> ValueProto field this store writes natively ("" = serialised ValueProto).
_PROTO_FIELD = {
    ValueType.FLOAT: "float_val",
    ValueType.DOUBLE: "double_val",
    ValueType.INT32: "int32_val",
    ValueType.INT64: "int64_val",
    ValueType.BOOL: "bool_val",
    ValueType.STRING: "string_val",
    ValueType.BYTES: "bytes_val",
}
_ARROW_TYPE = {"float_val": pa.float32(), "double_val": pa.float64(), "int64_val": pa.int64(),
               "int32_val": pa.int64(), "bool_val": pa.bool_(), "string_val": pa.string(), "bytes_val": pa.binary()}
_INT_CODES = (("b", np.int8), ("h", np.int16), ("i", np.int32), ("q", np.int64))
# Order of the fixed-size groups in a row (widest first; the order only has to be stable).
_FIXED_ORDER = ("d", "q", "f", "i", "h", "b", "?")
_NUMPY_CODE = {"d": "<f8", "f": "<f4", "q": "<i8", "i": "<i4", "h": "<i2", "b": "i1", "?": "?", "B": "u1", "I": "<u4"}

# Decoder kinds (small ints keep the per-value branch cheap).
_K_FLOAT, _K_DOUBLE, _K_INT64, _K_INT32, _K_BOOL, _K_STRING, _K_BYTES, _K_PROTO = range(8)
_KIND_OF_FIELD = {"float_val": _K_FLOAT, "double_val": _K_DOUBLE, "int64_val": _K_INT64, "int32_val": _K_INT32,
                  "bool_val": _K_BOOL, "string_val": _K_STRING, "bytes_val": _K_BYTES, "": _K_PROTO}


class RowSqliteOnlineStoreConfig(FeastConfigBaseModel):
    """Online store config: `type: feature_repo.online_store.RowSqliteOnlineStore` and `path`."""

    type: Literal["nextbest.feature_repo.online_store.RowSqliteOnlineStore"] = "nextbest.feature_repo.online_store.RowSqliteOnlineStore"
    path: StrictStr = "data/online_store.db"
    """Path of the SQLite file; relative paths are relative to the repo path, as for `sqlite`."""


# -- layouts -------------------------------------------------------------------------------------

class _Layout:
    """Decoder for one layout: which value sits where in `fixed` and `var`."""

    __slots__ = ("struct", "fields", "len_start", "n_var")

    def __init__(self, spec: dict):
        fixed, var = spec["fixed"], spec["var"]
        nullable = [i for i, f in enumerate(fixed) if f[3]]
        self.struct = struct.Struct("<" + "".join(f[2] for f in fixed) + "B" * len(nullable) + "I" * len(var))
        valid_slot = {i: len(fixed) + j for j, i in enumerate(nullable)}
        self.len_start = len(fixed) + len(nullable)
        self.n_var = len(var)
        # name -> (kind, slot in the unpacked tuple or index among var values, validity slot or -1)
        self.fields: dict[str, tuple[int, int, int]] = {}
        for i, (name, proto_field, _code, _nullable) in enumerate(fixed):
            self.fields[name] = (_KIND_OF_FIELD[proto_field], i, valid_slot.get(i, -1))
        for j, (name, proto_field) in enumerate(var):
            self.fields[name] = (_KIND_OF_FIELD[proto_field], j, -1)

    def _unpack(self, fixed: bytes, var: bytes | None) -> tuple[tuple, list[bytes | None]]:
        """The fixed-width values, and the variable-length ones cut out of `var` (None where null)."""
        vals = self.struct.unpack(fixed)
        parts: list[bytes | None] = []
        if self.n_var:
            var, pos = var or b"", 0
            for length in vals[self.len_start:]:
                if length == NULL_LENGTH:
                    parts.append(None)
                else:
                    parts.append(var[pos:pos + length])
                    pos += length
        return vals, parts

    def decode(self, fixed: bytes, var: bytes | None, names: Sequence[str] | None) -> dict[str, ValueProto]:
        vals, parts = self._unpack(fixed, var)
        out: dict[str, ValueProto] = {}
        fields = self.fields
        for name in names if names is not None else fields:
            f = fields.get(name)
            if f is None:
                continue  # not written in this row: absent, as in Feast's store
            kind, slot, valid = f
            p = ValueProto()
            if kind <= _K_DOUBLE:
                v = vals[slot]
                if v == v:  # NaN is a missing value
                    if kind == _K_FLOAT:
                        p.float_val = v
                    else:
                        p.double_val = v
            elif kind <= _K_BOOL:
                if valid < 0 or vals[valid]:
                    v = vals[slot]
                    if kind == _K_INT64:
                        p.int64_val = v
                    elif kind == _K_INT32:
                        p.int32_val = v
                    else:
                        p.bool_val = v
            else:
                b = parts[slot]
                if b is not None:
                    if kind == _K_STRING:
                        p.string_val = b.decode("utf-8")
                    elif kind == _K_BYTES:
                        p.bytes_val = b
                    else:
                        p.ParseFromString(b)
            out[name] = p
        return out


    def decode_python(self, fixed: bytes, var: bytes | None, names: Sequence[str]) -> dict[str, Any]:
        """Like `decode`, as plain Python values (None where missing): the serving hot path skips
        building protobufs only to read them back."""
        vals, parts = self._unpack(fixed, var)
        out: dict[str, Any] = {}
        fields = self.fields
        for name in names:
            f = fields.get(name)
            if f is None:
                out[name] = None
                continue
            kind, slot, valid = f
            if kind <= _K_DOUBLE:
                v = vals[slot]
                out[name] = v if v == v else None
            elif kind <= _K_BOOL:
                out[name] = vals[slot] if valid < 0 or vals[valid] else None
                if kind == _K_BOOL and out[name] is not None:
                    out[name] = bool(out[name])
            else:
                b = parts[slot]
                if b is None:
                    out[name] = None
                elif kind == _K_STRING:
                    out[name] = b.decode("utf-8")
                elif kind == _K_BYTES:
                    out[name] = b
                else:  # lists and other rare types: through Feast's own converter
                    p = ValueProto()
                    p.ParseFromString(b)
                    out[name] = feast_value_type_to_python_type(p)
        return out


def _layout_id(spec_json: str) -> int:
    """Content hash of a layout as a signed 64-bit SQLite integer."""
    return int.from_bytes(hashlib.blake2b(spec_json.encode(), digest_size=8).digest(), "little", signed=True)


# Layout ids are content hashes, so one cache serves every store instance and file.
_LAYOUTS: dict[int, _Layout] = {}


# -- encoding ------------------------------------------------------------------------------------

class _Encoded:
    """A batch encoded for insertion: the layout and one `fixed`/`var` value per row."""

    def __init__(self, spec_json: str, fixed: list[bytes], var: list[bytes | None]):
        self.spec_json = spec_json
        self.layout = _layout_id(spec_json)
        self.fixed = fixed
        self.var = var


def _as_array(values: Any) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if isinstance(values, pa.Array):
        return values
    return pa.array(values, from_pandas=True)


def _nan_to_null(arr: pa.Array) -> pa.Array:
    if pa.types.is_floating(arr.type):
        return pc.if_else(pc.is_nan(arr), pa.scalar(None, arr.type), arr)
    return arr


def _int_code(name: str, values: np.ndarray, widest: str) -> str:
    """The narrowest integer code that holds every value (the batch's layout records it)."""
    if not len(values):
        return "b"
    lo, hi = int(values.min()), int(values.max())
    for code, dtype in _INT_CODES:
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return code
        if code == widest:
            break
    raise ValueError(f"{name}: values from {lo} to {hi} do not fit the feature's type")


def _proto_fallback(arr: pa.Array, value_type: ValueType) -> pa.Array:
    """Feast's own conversion, serialised: exact for every type this store does not pack."""
    protos = python_values_to_proto_values(arr.to_numpy(zero_copy_only=False), value_type)
    return pa.array([p.SerializeToString() for p in protos], pa.binary())


def _rows_of(group_values: list[np.ndarray], dtype: str) -> np.ndarray:
    """Columns -> a C-ordered [n_rows, n_columns] array (stacking column-major, then one
    transposing copy, is several times faster than writing rows with a stride)."""
    return np.ascontiguousarray(np.stack([v.astype(dtype, copy=False) for v in group_values], axis=0).T)


def _encode(n: int, columns: Sequence[tuple[str, str, pa.Array]]) -> _Encoded:
    """Packs columns into per-row `fixed` and `var` values.

    Args:
        n: number of rows.
        columns: (feature name, ValueProto field, values) with the field from `_PROTO_FIELD`, or
            "" for values that are already serialised ValueProtos (binary).
    """
    fixed_cols: dict[str, list[tuple[str, str, np.ndarray]]] = {code: [] for code in _FIXED_ORDER}
    validity: dict[str, np.ndarray] = {}
    var_cols: list[tuple[str, str, pa.Array]] = []
    for name, field, arr in columns:
        if field in ("float_val", "double_val"):
            target = pa.float32() if field == "float_val" else pa.float64()
            arr = pc.fill_null(pc.cast(arr, target, safe=False), float("nan"))
            fixed_cols["f" if field == "float_val" else "d"].append((name, field, arr.to_numpy(zero_copy_only=False)))
        elif field in ("int64_val", "int32_val", "bool_val"):
            arr = _nan_to_null(arr)
            arr = pc.cast(arr, pa.bool_() if field == "bool_val" else pa.int64(), safe=False)
            if arr.null_count:
                validity[name] = arr.is_valid().to_numpy(zero_copy_only=False)
                arr = pc.fill_null(arr, False if field == "bool_val" else 0)
            values = arr.to_numpy(zero_copy_only=False)
            code = "?" if field == "bool_val" else _int_code(name, values, "q" if field == "int64_val" else "i")
            fixed_cols[code].append((name, field, values))
        else:
            if field == "string_val":
                arr = pc.cast(pc.cast(arr, pa.string()), pa.binary())
            elif field == "bytes_val":
                arr = pc.cast(arr, pa.binary())
            var_cols.append((name, field, arr))

    spec_fixed, blocks = [], []
    for code in _FIXED_ORDER:
        group = fixed_cols[code]
        if not group:
            continue
        spec_fixed += [[name, field, code, name in validity] for name, field, _ in group]
        blocks.append(_rows_of(group_values=[v for _, _, v in group], dtype=_NUMPY_CODE[code]))
    valid_names = [name for name, *_ in spec_fixed if name in validity]
    if valid_names:
        blocks.append(_rows_of([validity[name] for name in valid_names], "u1"))
    if var_cols:
        lengths = [pc.fill_null(pc.cast(pc.binary_length(a), pa.int64()), NULL_LENGTH).to_numpy(zero_copy_only=False)
                   for _, _, a in var_cols]
        blocks.append(_rows_of(lengths, "<u4"))
        arrays = [a for _, _, a in var_cols]
        joined = arrays[0] if len(arrays) == 1 else pc.binary_join_element_wise(
            *arrays, b"", null_handling="replace", null_replacement=b"")
        var = pc.fill_null(joined, b"").to_numpy(zero_copy_only=False).tolist()
    else:
        var = [None] * n
    if blocks:
        rows = np.concatenate([b.view(np.uint8).reshape(n, b.shape[1] * b.dtype.itemsize) for b in blocks], axis=1)
        width = rows.shape[1]
        buf = rows.tobytes()
        fixed = [buf[i:i + width] for i in range(0, n * width, width)] if width else [b""] * n
    else:
        fixed = [b""] * n
    spec = {"v": LAYOUT_VERSION, "fixed": spec_fixed, "var": [[name, field] for name, field, _ in var_cols]}
    return _Encoded(json.dumps(spec, separators=(",", ":")), fixed, var)


def _feature_columns(feature_view: FeatureView) -> list[tuple[str, ValueType]]:
    return [(f.name, f.dtype.to_value_type()) for f in feature_view.features]


def _frame_columns(table: pa.Table, features: list[tuple[str, ValueType]]) -> list[tuple[str, str, pa.Array]]:
    columns = []
    for name, value_type in features:
        arr = _as_array(table.column(name))
        field = _PROTO_FIELD.get(value_type)
        if field is None:
            arr = _proto_fallback(arr, value_type)
            field = ""
        columns.append((name, field, arr))
    return columns


def _proto_columns(rows: list[dict[str, ValueProto]],
                   features: list[tuple[str, ValueType]]) -> list[tuple[str, str, pa.Array]]:
    """Columns from Feast's per-row ValueProto dicts (the generic write path)."""
    known = {name for name, _ in features}
    extra = list(dict.fromkeys(k for row in rows for k in row if k not in known))
    columns = []
    for name, value_type in [*features, *((k, ValueType.UNKNOWN) for k in extra)]:
        protos = [row.get(name) for row in rows]
        if all(p is None for p in protos):
            continue  # not written at all: absent on read, as in Feast's store
        field = _PROTO_FIELD.get(value_type)
        present = {p.WhichOneof("val") for p in protos if p is not None} - {None}
        if field is not None and present <= {field}:
            values = [getattr(p, field) if p is not None and p.WhichOneof("val") == field else None for p in protos]
            columns.append((name, field, pa.array(values, _ARROW_TYPE[field])))
        else:
            # A value of another type than the schema says: keep it exactly as given.
            columns.append((name, "", pa.array([b"" if p is None else p.SerializeToString() for p in protos],
                                               pa.binary())))
    return columns


# -- entity keys ---------------------------------------------------------------------------------

def _entity_keys(table: pa.Table, join_keys: list[tuple[str, ValueType]], version: int) -> list[bytes]:
    """Feast's serialised entity keys (`serialize_entity_key`) for every row, vectorised for one
    string or integer join key."""
    n = table.num_rows
    if version >= 3 and len(join_keys) == 1 and join_keys[0][1] in (ValueType.STRING, ValueType.INT64,
                                                                     ValueType.INT32):
        name, value_type = join_keys[0]
        arr = _as_array(table.column(name))
        if arr.null_count:
            raise ValueError(f"join key {name!r} has missing values")
        encoded = name.encode("utf8")
        prefix = (struct.pack("<III", 1, ValueType.STRING.value, len(encoded)) + encoded
                  + struct.pack("<I", value_type.value))
        if value_type == ValueType.STRING:
            values = pc.cast(pc.cast(arr, pa.string()), pa.binary())
            lengths = pc.binary_length(values).to_numpy(zero_copy_only=False).astype("<u4")
            length_bytes = pa.FixedSizeBinaryArray.from_buffers(pa.binary(4), n,
                                                                [None, pa.py_buffer(lengths.tobytes())])
            keys = pc.binary_join_element_wise(pa.scalar(prefix, pa.binary()), pc.cast(length_bytes, pa.binary()),
                                               values, b"")
            return keys.to_numpy(zero_copy_only=False).tolist()
        dtype, size = ("<i8", 8) if value_type == ValueType.INT64 else ("<i4", 4)
        values = np.asarray(pc.cast(arr, pa.int64()).to_numpy(zero_copy_only=False)).astype(dtype)
        head = prefix + struct.pack("<I", size)
        buf = values.tobytes()
        return [head + buf[i:i + size] for i in range(0, n * size, size)]
    protos = {name: python_values_to_proto_values(_as_array(table.column(name)).to_numpy(zero_copy_only=False),
                                                  value_type) for name, value_type in join_keys}
    names = [name for name, _ in join_keys]
    return [serialize_entity_key(EntityKeyProto(join_keys=names, entity_values=[protos[k][i] for k in names]),
                                 entity_key_serialization_version=version) for i in range(n)]


def _micros(ts: datetime) -> int:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return (ts - _EPOCH) // _ONE_US


def _timestamps_us(arr: pa.Array) -> list[int]:
    if not pa.types.is_timestamp(arr.type):
        arr = pc.cast(arr, pa.timestamp("us", tz="UTC"))
    if arr.null_count:
        raise ValueError("event timestamps have missing values")
    return pc.cast(pc.cast(arr, pa.timestamp("us", tz=arr.type.tz), safe=False), pa.int64()).to_numpy().tolist()


# -- the store -----------------------------------------------------------------------------------

def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table_name(config: RepoConfig, table: FeatureView) -> str:
    return compute_table_id(config.project, table, config.registry.enable_online_feature_view_versioning)


class RowSqliteOnlineStore(OnlineStore):
    """Feast online store in SQLite, one row per (feature view, entity); see the module docstring."""

    def __init__(self) -> None:
        self._conn: sqlite3.Connection | None = None
        self._conn_pid: int | None = None
        self._lock = threading.RLock()

    # connection ------------------------------------------------------------------------------

    @staticmethod
    def db_path(config: RepoConfig) -> Path:
        path = Path(config.online_store.path)
        if config.repo_path and not path.is_absolute():
            path = Path(config.repo_path) / path
        return path

    def _get_conn(self, config: RepoConfig) -> sqlite3.Connection:
        if self._conn is None or self._conn_pid != os.getpid():
            path = self.db_path(config)
            path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: every write below runs in an explicit BEGIN IMMEDIATE ... COMMIT.
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_S)
            # WAL lets readers (serving) go on while a materialisation writes; NORMAL is durable
            # up to the last checkpoint, enough for a store rebuilt from the offline tables.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._conn, self._conn_pid = conn, os.getpid()
        return self._conn

    def close_connection(self) -> None:
        """Closes this process's connection (the next call opens a new one)."""
        with self._lock:
            if self._conn is not None and self._conn_pid == os.getpid():
                self._conn.close()
            self._conn, self._conn_pid = None, None

    def _ensure_tables(self, conn: sqlite3.Connection, names: Sequence[str]) -> None:
        """Creates the layout table and view tables, replacing any table of another shape (for
        instance Feast's stock SQLite tables left in the same file): the online store is a cache
        of the offline tables and is refilled by the next materialisation."""
        conn.execute(f"CREATE TABLE IF NOT EXISTS {LAYOUT_TABLE} (id INTEGER PRIMARY KEY, spec TEXT NOT NULL)")
        for name in names:
            existing = [row[1] for row in conn.execute(f"PRAGMA table_info({_quote(name)})")]
            if existing and tuple(existing) != COLUMNS:
                logger.warning("online store table %s has columns %s; replacing it (materialise again)",
                               name, existing)
                conn.execute(f"DROP TABLE {_quote(name)}")
            conn.execute(f"CREATE TABLE IF NOT EXISTS {_quote(name)} (entity_key BLOB PRIMARY KEY NOT NULL, "
                         "event_ts INTEGER NOT NULL, layout INTEGER NOT NULL, fixed BLOB NOT NULL, var BLOB)")

    def _layout(self, conn: sqlite3.Connection, layout_id: int) -> _Layout:
        layout = _LAYOUTS.get(layout_id)
        if layout is None:
            row = conn.execute(f"SELECT spec FROM {LAYOUT_TABLE} WHERE id = ?", (layout_id,)).fetchone()
            if row is None or _layout_id(row[0]) != layout_id:
                raise ValueError(f"online store: unknown row layout {layout_id}")
            layout = _LAYOUTS[layout_id] = _Layout(json.loads(row[0]))
        return layout

    # writes ----------------------------------------------------------------------------------

    def _write(self, config: RepoConfig, table: FeatureView,
               chunks: Callable[[], Any]) -> int:
        """Runs `chunks()` (an iterator of (keys, timestamps_us, _Encoded)) in one transaction."""
        name = _table_name(config, table)
        sql = (f"INSERT INTO {_quote(name)} ({', '.join(COLUMNS)}) VALUES (?, ?, ?, ?, ?) "
               "ON CONFLICT(entity_key) DO UPDATE SET event_ts = excluded.event_ts, layout = excluded.layout, "
               "fixed = excluded.fixed, var = excluded.var")
        rows = 0
        with self._lock:
            conn = self._get_conn(config)
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._ensure_tables(conn, [name])
                for keys, stamps, enc in chunks():
                    conn.execute(f"INSERT OR IGNORE INTO {LAYOUT_TABLE} (id, spec) VALUES (?, ?)",
                                 (enc.layout, enc.spec_json))
                    conn.executemany(sql, zip(keys, stamps, [enc.layout] * len(keys), enc.fixed, enc.var))
                    rows += len(keys)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return rows

    def write_frame(self, config: RepoConfig, feature_view: FeatureView, frame: pd.DataFrame | pa.Table) -> int:
        """Writes rows of a feature view in bulk, in one transaction; returns the rows written.

        Args:
            config: the repo config (project, online store path, key serialisation version).
            feature_view: the view; its schema decides the value types written.
            frame: the join key column(s), the view's timestamp field and every feature column.
                One row per entity is expected; if an entity repeats, its last row wins, as with
                Feast's writer.

        Either every row is written or, on any error, none is and the previous values stay.
        """
        table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
        return self.write_batches(config, feature_view,
                                  (table.slice(at, WRITE_CHUNK_ROWS) for at in range(0, table.num_rows,
                                                                                     WRITE_CHUNK_ROWS)))

    def write_batches(self, config: RepoConfig, feature_view: FeatureView,
                      batches: Iterable[pa.Table | pa.RecordBatch]) -> int:
        """`write_frame` for a stream of batches (each encoded and inserted as it comes), still in
        one transaction; returns the rows written."""
        if feature_view.batch_source is None:
            raise ValueError(f"{feature_view.name}: a feature view without a batch source has no timestamp field")
        join_keys = [(c.name, c.dtype.to_value_type()) for c in feature_view.entity_columns]
        ts_field = feature_view.batch_source.timestamp_field
        features = _feature_columns(feature_view)
        needed = [*(k for k, _ in join_keys), ts_field, *(f for f, _ in features)]

        def chunks():
            for part in batches:
                missing = [c for c in needed if c not in part.schema.names]
                if missing:
                    raise ValueError(f"{feature_view.name}: columns missing from the frame: {missing}")
                if not part.num_rows:
                    continue
                keys = _entity_keys(part, join_keys, config.entity_key_serialization_version)
                stamps = _timestamps_us(_as_array(part.column(ts_field)))
                yield keys, stamps, _encode(part.num_rows, _frame_columns(part, features))

        rows = self._write(config, feature_view, chunks)
        self._checkpoint(config)
        return rows

    def _checkpoint(self, config: RepoConfig) -> None:
        """Folds the write-ahead log back into the file so a bulk load leaves no large -wal file."""
        with self._lock:
            conn = self._get_conn(config)
            # Readers (serving) may hold the log: wait a moment, not the minute writes may wait.
            conn.execute("PRAGMA busy_timeout = 1000")
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError:  # still busy: a later checkpoint will do it
                pass
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")

    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]],
        progress: Callable[[int], Any] | None,
    ) -> None:
        def chunks():
            if not data:
                return
            version = config.entity_key_serialization_version
            keys = [serialize_entity_key(k, entity_key_serialization_version=version) for k, _, _, _ in data]
            stamps = [_micros(ts) for _, _, ts, _ in data]
            yield keys, stamps, _encode(len(data), _proto_columns([v for _, v, _, _ in data],
                                                                  _feature_columns(table)))

        self._write(config, table, chunks)
        if progress:
            progress(len(data))

    # reads -----------------------------------------------------------------------------------

    def online_read(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: list[EntityKeyProto],
        requested_features: list[str] | None = None,
    ) -> list[tuple[datetime | None, dict[str, ValueProto] | None]]:
        version = config.entity_key_serialization_version
        keys = [serialize_entity_key(k, entity_key_serialization_version=version) for k in entity_keys]
        name = _quote(_table_name(config, table))
        found: dict[bytes, tuple] = {}
        with self._lock:
            conn = self._get_conn(config)
            for start in range(0, len(keys), READ_CHUNK_KEYS):
                part = keys[start:start + READ_CHUNK_KEYS]
                where = "entity_key = ?" if len(part) == 1 else f"entity_key IN ({','.join('?' * len(part))})"
                for row in conn.execute(f"SELECT entity_key, event_ts, layout, fixed, var FROM {name} WHERE {where}",
                                        part):
                    found[row[0]] = row
            result: list[tuple[datetime | None, dict[str, ValueProto] | None]] = []
            for key in keys:
                row = found.get(key)
                if row is None:
                    result.append((None, None))
                    continue
                _, event_us, layout_id, fixed, var = row
                values = self._layout(conn, layout_id).decode(fixed, var, requested_features)
                result.append((_EPOCH + timedelta(microseconds=event_us), values))
        return result

    def read_python(self, config: RepoConfig, tables: Sequence[tuple[FeatureView, Sequence[str]]],
                    entity_key: EntityKeyProto) -> dict[str, Any] | None:
        """One entity's features from several views as plain Python values; None if no view has it.

        What `FeatureStore.get_online_features(...).to_dict()` returns for one entity (same
        names, same values), without the registry lookups and protobuf round trips that make up
        most of its ~2 ms: the decision service calls this once per request.
        """
        key = serialize_entity_key(entity_key, entity_key_serialization_version=config.entity_key_serialization_version)
        out: dict[str, Any] = {}
        found = False
        with self._lock:
            conn = self._get_conn(config)
            for table, names in tables:
                row = conn.execute(f"SELECT layout, fixed, var FROM {_quote(_table_name(config, table))} "
                                   "WHERE entity_key = ?", (key,)).fetchone()
                if row is None:
                    out.update(dict.fromkeys(names))
                    continue
                found = True
                out.update(self._layout(conn, row[0]).decode_python(row[1], row[2], names))
        return out if found else None

    # infrastructure --------------------------------------------------------------------------

    def update(
        self,
        config: RepoConfig,
        tables_to_delete: Sequence[FeatureView],
        tables_to_keep: Sequence[FeatureView],
        entities_to_delete: Sequence[Entity],
        entities_to_keep: Sequence[Entity],
        partial: bool,
    ) -> None:
        with self._lock:
            conn = self._get_conn(config)
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._ensure_tables(conn, [_table_name(config, t) for t in tables_to_keep])
                for t in tables_to_delete:
                    name = _table_name(config, t)
                    conn.execute(f"DROP TABLE IF EXISTS {_quote(name)}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        self.close_connection()

    def teardown(self, config: RepoConfig, tables: Sequence[FeatureView], entities: Sequence[Entity]) -> None:
        """Deletes the database file, as Feast's SQLite store does."""
        self.close_connection()
        path = self.db_path(config)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
