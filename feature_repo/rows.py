"""The row codec of the SQLite online store (`online_store.RowSqliteOnlineStore`): one row per
(feature view, entity), its values packed by a *layout* (see that module's docstring for the row
format). Encoding works column by column with numpy and Arrow kernels; entity keys are Feast's own
serialisation, so the Redis bulk writer (`redis_store`) shares them."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from feast import FeatureView
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values
from feast.value_type import ValueType


LAYOUT_TABLE = "feast_row_layouts"
LAYOUT_VERSION = 1
COLUMNS = ("entity_key", "event_ts", "layout", "fixed", "var")
NULL_LENGTH = 0xFFFFFFFF  # byte length recorded for a missing variable-size value
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
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



# -- layouts -------------------------------------------------------------------------------------

class Layout:
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


def spec_layout_id(spec_json: str) -> int:
    """Content hash of a layout as a signed 64-bit SQLite integer."""
    return int.from_bytes(hashlib.blake2b(spec_json.encode(), digest_size=8).digest(), "little", signed=True)


# Layout ids are content hashes, so one cache serves every store instance and file.
LAYOUTS: dict[int, Layout] = {}


# -- encoding ------------------------------------------------------------------------------------

class Encoded:
    """A batch encoded for insertion: the layout and one `fixed`/`var` value per row."""

    def __init__(self, spec_json: str, fixed: list[bytes], var: list[bytes | None]):
        self.spec_json = spec_json
        self.layout = spec_layout_id(spec_json)
        self.fixed = fixed
        self.var = var


def as_array(values: Any) -> pa.Array:
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


def encode(n: int, columns: Sequence[tuple[str, str, pa.Array]]) -> Encoded:
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
    return Encoded(json.dumps(spec, separators=(",", ":")), fixed, var)


def feature_columns(feature_view: FeatureView) -> list[tuple[str, ValueType]]:
    return [(f.name, f.dtype.to_value_type()) for f in feature_view.features]


def frame_columns(table: pa.Table, features: list[tuple[str, ValueType]]) -> list[tuple[str, str, pa.Array]]:
    columns = []
    for name, value_type in features:
        arr = as_array(table.column(name))
        field = _PROTO_FIELD.get(value_type)
        if field is None:
            arr = _proto_fallback(arr, value_type)
            field = ""
        columns.append((name, field, arr))
    return columns


def proto_columns(rows: list[dict[str, ValueProto]],
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

def entity_keys(table: pa.Table, join_keys: list[tuple[str, ValueType]], version: int) -> list[bytes]:
    """Feast's serialised entity keys (`serialize_entity_key`) for every row, vectorised for one
    string or integer join key."""
    n = table.num_rows
    if version >= 3 and len(join_keys) == 1 and join_keys[0][1] in (ValueType.STRING, ValueType.INT64,
                                                                     ValueType.INT32):
        name, value_type = join_keys[0]
        arr = as_array(table.column(name))
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
    protos = {name: python_values_to_proto_values(as_array(table.column(name)).to_numpy(zero_copy_only=False),
                                                  value_type) for name, value_type in join_keys}
    names = [name for name, _ in join_keys]
    return [serialize_entity_key(EntityKeyProto(join_keys=names, entity_values=[protos[k][i] for k in names]),
                                 entity_key_serialization_version=version) for i in range(n)]


def micros(ts: datetime) -> int:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return (ts - EPOCH) // _ONE_US


def timestamps_us(arr: pa.Array) -> list[int]:
    if not pa.types.is_timestamp(arr.type):
        arr = pc.cast(arr, pa.timestamp("us", tz="UTC"))
    if arr.null_count:
        raise ValueError("event timestamps have missing values")
    return pc.cast(pc.cast(arr, pa.timestamp("us", tz=arr.type.tz), safe=False), pa.int64()).to_numpy().tolist()


