"""Reading and writing the work directory's tables (the I/O edge; the core stays pure)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nextbest.schema import SchemaError, validate

RAW_TABLES = ("customers", "holdings", "transactions", "interactions", "offers")


def atomic_write(target: Path, write: Callable[[str], None]) -> Path:
    """Calls `write(tmp_path)` for a temporary file beside `target`, then renames it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_json(target: Path, data) -> Path:
    """Strict JSON (non-finite numbers become null), written atomically."""
    text = json.dumps(_finite(data), indent=2, default=_json_default, allow_nan=False)
    return atomic_write(target, lambda t: Path(t).write_text(text))


def _finite(value):
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return None
    return value


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (pd.Timestamp, np.datetime64)):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def atomic_write_parquet(table: pd.DataFrame | pa.Table, path: Path) -> Path:
    """Writes a parquet file via a temp file in the same directory, then renames it into place."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path


class StreamingParquetWriter:
    """Appends Arrow batches to several parquet files; all appear atomically on `commit()`."""

    def __init__(self, root: Path, compression: str = "snappy"):
        self.root = root
        self.compression = compression
        self._writers: dict[str, tuple[pq.ParquetWriter, Path, Path]] = {}

    def write(self, name: str, table: pa.Table) -> None:
        if name not in self._writers:
            final = self.root / f"{name}.parquet"
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f".{final.name}.tmp")
            self._writers[name] = (pq.ParquetWriter(tmp, table.schema, compression=self.compression), tmp, final)
        writer = self._writers[name][0]
        writer.write_table(table.cast(writer.schema) if table.schema != writer.schema else table)

    def commit(self, metadata: dict[str, dict[str, str]] | None = None) -> list[Path]:
        """Closes every file (with `metadata[name]` added to its footer), then renames them all into place
        (a file that fails to close, e.g. on a full disk, leaves every earlier file as it was)."""
        for name, (writer, _, _) in self._writers.items():
            if metadata and name in metadata:
                writer.add_key_value_metadata(metadata[name])
            writer.close()
        out = []
        for _, tmp, final in self._writers.values():
            os.replace(tmp, final)
            out.append(final)
        self._writers.clear()
        return out

    def abort(self) -> None:
        for writer, tmp, _ in self._writers.values():
            writer.close()
            tmp.unlink(missing_ok=True)
        self._writers.clear()


def read_raw(raw_dir: Path, products: list[str], tables: tuple[str, ...] = RAW_TABLES) -> dict[str, pd.DataFrame]:
    """Reads and validates the canonical raw tables; a missing optional `offers` table is empty.

    Raises:
        SchemaError: a table is missing or breaks the schema (the message names file, column, row).
    """
    out: dict[str, pd.DataFrame] = {}
    for name in tables:
        path = raw_dir / f"{name}.parquet"
        if not path.exists():
            if name == "offers":
                continue
            raise SchemaError(f"{path}: file not found (run `nextbest generate` or `nextbest ingest` first)")
        try:
            df = pd.read_parquet(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise SchemaError(f"{path}: not a readable parquet file ({exc})") from None
        out[name] = validate(df, name, source=path, products=products)
    return out
