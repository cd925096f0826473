"""Arrow columns for the simulated bank's tables, built from integer codes and integer dates.

String columns are never built in Python or numpy, only as integer codes turned into Arrow
strings at the end: `pa.Array.take` on a small dictionary (`decode`), a byte gather for
fixed-width ids (`fixed_width_take`), Arrow's int-to-string cast for running ids
(`running_ids`). Dates are integer datetime64 arithmetic (`days_after`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MAX_STRING_BYTES = 2**31 - 1  # of one Arrow string array (32-bit offsets)


def label_array(values: tuple[str, ...] | list[str]) -> pa.Array:
    """The dictionary that `decode` takes codes into."""
    return pa.array(list(values), pa.string())


def decode(labels: pa.Array, codes: np.ndarray) -> pa.Array:
    """Integer codes -> Arrow strings (`labels[code]`); negative codes become nulls."""
    missing = codes < 0
    return labels.take(pa.array(codes, mask=missing if missing.any() else None))


def running_ids(prefix: str, start: int, count: int, width: int = 0) -> pa.Array:
    """`prefix` + the integers start.. start+count-1 (zero-padded to `width`), as Arrow strings."""
    digits = pc.cast(pa.array(np.arange(start, start + count, dtype=np.int64)), pa.string())
    if width:
        digits = pc.utf8_lpad(digits, width, "0")
    return pc.binary_join_element_wise(prefix, digits, "")


def fixed_width_take(data: np.ndarray, idx: np.ndarray) -> pa.Array | pa.ChunkedArray:
    """Strings of one byte width (`data`, numpy `S<width>`) taken at `idx`, as one Arrow string
    array: a byte gather, several times faster than `pa.Array.take`. Results beyond 32-bit
    offsets come in chunks."""
    width = data.dtype.itemsize
    rows = MAX_STRING_BYTES // width - 1
    if len(idx) > rows:
        return pa.chunked_array([fixed_width_take(data, idx[i:i + rows]) for i in range(0, len(idx), rows)])
    gathered = data[idx]
    offsets = np.arange(0, (len(idx) + 1) * width, width, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), len(idx), [None, pa.py_buffer(offsets), pa.py_buffer(gathered)])


def days_after(start: np.datetime64 | np.ndarray, days: np.ndarray) -> np.ndarray:
    """`start` + `days` (whole days) as datetime64[us] (the unit these columns always had),
    in integer arithmetic."""
    us = days * np.int64(86_400_000_000)
    us += np.asarray(start, dtype="datetime64[us]").view(np.int64)
    return us.view("datetime64[us]")


def timestamps(values: np.ndarray) -> pa.Array:
    return pa.array(values.astype("datetime64[ns]", copy=False))


def constant_timestamps(value: np.datetime64, count: int) -> pa.Array:
    return pa.array(np.full(count, value, dtype="datetime64[ns]"))
