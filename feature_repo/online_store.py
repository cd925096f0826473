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

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
from feast import Entity, FeatureView
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import compute_table_id
from feast.infra.online_stores.online_store import OnlineStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import FeastConfigBaseModel, RepoConfig
from pydantic import StrictStr

from nextbest.feature_repo.rows import (COLUMNS, EPOCH, LAYOUT_TABLE, LAYOUTS, Layout, as_array, encode, entity_keys,
                                        feature_columns, frame_columns, micros, proto_columns, spec_layout_id,
                                        timestamps_us)

logger = logging.getLogger(__name__)

STORE_TYPE = "nextbest.feature_repo.online_store.RowSqliteOnlineStore"
_BUSY_TIMEOUT_S = 60.0  # how long a write waits for another writer (a concurrent materialisation)
# Rows encoded and inserted at a time by `write_frame`: bounds memory, not the transaction.
WRITE_CHUNK_ROWS = 200_000
# SQLite's limit on bound parameters is 32766; stay well below it per read.
READ_CHUNK_KEYS = 500


class RowSqliteOnlineStoreConfig(FeastConfigBaseModel):
    """Online store config: `type: feature_repo.online_store.RowSqliteOnlineStore` and `path`."""

    type: Literal["nextbest.feature_repo.online_store.RowSqliteOnlineStore"] = (
        "nextbest.feature_repo.online_store.RowSqliteOnlineStore")
    path: StrictStr = "data/online_store.db"
    """Path of the SQLite file; relative paths are relative to the repo path, as for `sqlite`."""


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

    def _layout(self, conn: sqlite3.Connection, layout_id: int) -> Layout:
        layout = LAYOUTS.get(layout_id)
        if layout is None:
            row = conn.execute(f"SELECT spec FROM {LAYOUT_TABLE} WHERE id = ?", (layout_id,)).fetchone()
            if row is None or spec_layout_id(row[0]) != layout_id:
                raise ValueError(f"online store: unknown row layout {layout_id}")
            layout = LAYOUTS[layout_id] = Layout(json.loads(row[0]))
        return layout

    # writes ----------------------------------------------------------------------------------

    def _write(self, config: RepoConfig, table: FeatureView,
               chunks: Callable[[], Any]) -> int:
        """Runs `chunks()` (an iterator of (keys, timestamps_us, Encoded)) in one transaction."""
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
        features = feature_columns(feature_view)
        needed = [*(k for k, _ in join_keys), ts_field, *(f for f, _ in features)]

        def chunks():
            for part in batches:
                missing = [c for c in needed if c not in part.schema.names]
                if missing:
                    raise ValueError(f"{feature_view.name}: columns missing from the frame: {missing}")
                if not part.num_rows:
                    continue
                keys = entity_keys(part, join_keys, config.entity_key_serialization_version)
                stamps = timestamps_us(as_array(part.column(ts_field)))
                yield keys, stamps, encode(part.num_rows, frame_columns(part, features))

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
            stamps = [micros(ts) for _, _, ts, _ in data]
            yield keys, stamps, encode(len(data), proto_columns([v for _, v, _, _ in data],
                                                                  feature_columns(table)))

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
                result.append((EPOCH + timedelta(microseconds=event_us), values))
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
