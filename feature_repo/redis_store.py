"""Redis as the online store: where it is (a URL, persisted as Feast's connection string) and a
bulk writer in exactly the layout of Feast's own `RedisOnlineStore`.

Feast keeps one Redis hash per entity and project (key: the serialised entity key followed by
the project name). Each feature is a hash field named by the murmur3 hash of
`"<view>:<feature>"`, its value a serialised `ValueProto`; `_ts:<view>` holds the view's event
time as a serialised protobuf `Timestamp`. Stock `get_online_features` reads that layout, so
anything written here is served by Feast unchanged.

Feast's materialisation builds a protobuf per value and a dict per row in Python, then reads
every key's timestamp before writing it. `write_batches` encodes a batch column by column
instead: floats with numpy (a tag byte and the little-endian value, as protobuf writes them),
every other type once per *distinct* value through Feast's own converter (so the bytes are
Feast's by construction), frames one `HSET` per row itself, and sends the rows in pipelines
from a background thread while the next batch is encoded. Values that are missing
(null, or NaN as Feast treats it) are written as empty values, as Feast writes them, so a newer
snapshot always replaces an older one's fields.
"""

from __future__ import annotations

import math
import urllib.parse
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from feast import FeatureView
from feast.infra.online_stores.helpers import _mmh3, compute_versioned_name
from feast.repo_config import RepoConfig
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from nextbest.feature_repo.rows import as_array, entity_keys, feature_columns

REDIS_PASSWORD_ENV = "NEXTBEST_REDIS_PASSWORD"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
# A healthy Redis answers in about a millisecond. redis-py's own defaults (no socket timeout,
# three retries backing off up to 2, 4 and 8 s) would hold a request thread for seconds, or for ever,
# when Redis is down or hung; serving's budget is tens of milliseconds and it answers degraded
# instead, so the store fails fast and the next call reconnects.
DEFAULT_SOCKET_TIMEOUT_S = 2.0
DEFAULT_CONNECT_TIMEOUT_S = 1.0
_URL_OPTIONS = {"socket_timeout", "socket_connect_timeout"}
_SCHEMES = {"redis": False, "rediss": True}  # scheme -> TLS

# Rows encoded and sent per pipeline: bounds memory (one bytes object per value) and the
# size of a reply, not the materialisation.
PIPELINE_ROWS = 4096

# ValueProto wire tags of the types written with numpy: (field number << 3) | wire type.
_FLOAT_TAG = (6 << 3) | 5   # float_val, fixed32
_DOUBLE_TAG = (5 << 3) | 1  # double_val, fixed64


class OnlineStoreUnavailable(ConnectionError):
    """The configured online store cannot be reached, or refuses the login or a write (the
    message names the store and the cause)."""


@dataclass(frozen=True)
class RedisTarget:
    """One Redis database, as `redis[s]://HOST:PORT/DB[?socket_timeout=S&socket_connect_timeout=S]`.

    The password never goes into the URL (the choice is written to `feast/feature_store.yaml`):
    when `password_env` is set, the config refers to that environment variable and Feast
    substitutes it when it loads the file.
    """

    host: str
    port: int = 6379
    db: int = 0
    ssl: bool = False
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT_S
    socket_connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S
    password_env: str | None = None

    @classmethod
    def from_url(cls, url: str, password_env: str | None = None, source: str | None = None) -> RedisTarget:
        """Parses a Redis URL.

        Args:
            url: `redis[s]://HOST[:PORT][/DB][?socket_timeout=S&socket_connect_timeout=S]`.
            password_env: the environment variable holding the password, if Redis wants one.
            source: where the URL came from (a flag, a variable), for error messages.

        Raises:
            ValueError: naming the URL (any password masked), its source, and what is wrong.
        """
        url = url.strip()

        def bad(why: str) -> ValueError:
            origin = f" (from {source})" if source else ""
            return ValueError(f"bad Redis URL {_redacted(url)!r}{origin}: {why}; expected redis://HOST:PORT/DB")

        try:
            parts = urllib.parse.urlsplit(url)
        except ValueError as exc:  # an unclosed [ in the host
            raise bad(str(exc)) from None
        if parts.scheme not in _SCHEMES:
            raise bad(f"scheme must be redis:// or rediss://, not {parts.scheme + '://' if parts.scheme else 'none'}")
        if parts.username or parts.password:
            raise bad(f"no password in the URL (it is written to feast/feature_store.yaml); set {REDIS_PASSWORD_ENV}")
        try:
            host, port = parts.hostname, parts.port or 6379
        except ValueError:
            raise bad("the port is not a number from 1 to 65535") from None
        if not host:
            raise bad("no host")
        if ":" in host:
            raise bad("IPv6 addresses cannot be written in Feast's connection string; use a host name")
        if parts.port == 0:
            raise bad("the port is not a number from 1 to 65535")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise bad(f"the database must be a number, not {path!r}")
        if parts.fragment:
            raise bad("no #fragment")
        options: dict[str, float] = {}
        for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            if key not in _URL_OPTIONS:
                raise bad(f"unknown option {key!r} (known: {', '.join(sorted(_URL_OPTIONS))})")
            try:
                options[key] = float(value)
            except ValueError:
                raise bad(f"{key} must be a number of seconds, not {value!r}") from None
            if not (math.isfinite(options[key]) and options[key] > 0):
                raise bad(f"{key} must be a positive number of seconds, not {value!r}")
        return cls(host=host, port=port, db=int(path or 0), ssl=_SCHEMES[parts.scheme],
                   password_env=password_env, **options)

    @property
    def url(self) -> str:
        """The URL (no password) that names this database in messages."""
        return f"{'rediss' if self.ssl else 'redis'}://{self.host}:{self.port}/{self.db}"

    @property
    def connection_string(self) -> str:
        """Feast's `connection_string`: `host:port,param=value,...`, passed to redis-py."""
        params = [f"{self.host}:{self.port}", f"db={self.db}"]
        if self.ssl:
            params.append("ssl=true")
        if self.password_env:
            params.append(f"password=${{{self.password_env}}}")
        # `retry=null`: no retries with backoff (see DEFAULT_SOCKET_TIMEOUT_S); a connection
        # left broken by a Redis restart is still replaced when it is next taken from the pool.
        params += [f"socket_connect_timeout={self.socket_connect_timeout:g}",
                   f"socket_timeout={self.socket_timeout:g}", "retry=null"]
        return ",".join(params)

    @classmethod
    def from_connection_string(cls, text: str) -> RedisTarget:
        """The inverse of `connection_string` (for a config this module wrote)."""
        nodes = [p for p in text.split(",") if "=" not in p]
        params = dict(p.split("=", 1) for p in text.split(",") if "=" in p)
        if len(nodes) != 1 or nodes[0].count(":") != 1:
            raise ValueError(f"Redis connection string {text!r}: expected one host:port")
        host, port = nodes[0].split(":")
        unknown = set(params) - {"db", "ssl", "password", "socket_timeout", "socket_connect_timeout", "retry"}
        if unknown:
            raise ValueError(f"Redis connection string {text!r}: parameters {sorted(unknown)} are not ones "
                             "`nextbest features apply` writes; choose the store again with --redis-url")
        password = params.get("password", "")
        password_env = password[2:-1] if password.startswith("${") and password.endswith("}") else None
        if password and not password_env:
            raise ValueError(f"Redis connection string {text!r}: a literal password; use {REDIS_PASSWORD_ENV}")
        return cls(host=host, port=int(port), db=int(params.get("db", 0)), ssl=params.get("ssl") == "true",
                   socket_timeout=float(params.get("socket_timeout", DEFAULT_SOCKET_TIMEOUT_S)),
                   socket_connect_timeout=float(params.get("socket_connect_timeout", DEFAULT_CONNECT_TIMEOUT_S)),
                   password_env=password_env)


def _redacted(url: str) -> str:
    """The URL with any password replaced by `***`, fit for a message."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not (sep and at):
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"


def redis_target(url: str, env: Mapping[str, str], source: str | None = None) -> RedisTarget:
    """`RedisTarget.from_url`, referring to `$NEXTBEST_REDIS_PASSWORD` when `env` sets it."""
    return RedisTarget.from_url(url, password_env=REDIS_PASSWORD_ENV if env.get(REDIS_PASSWORD_ENV) else None,
                                source=source)


# -- encoding --------------------------------------------------------------------------------------
# Each encoder returns one bytes object per row: the serialised value, or with `resp=True` the
# value framed as a RESP bulk string (`$<length>\r\n<value>\r\n`), ready to go on the wire.

def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _fixed_width(arr: pa.Array, tag: int, dtype: str, resp: bool) -> list[bytes]:
    """A float column: tag byte + little-endian value, empty if missing; framed with numpy too."""
    values = arr.to_numpy(zero_copy_only=False).astype(dtype, copy=False)  # nulls come back as NaN
    size = 1 + np.dtype(dtype).itemsize
    fields = [("tag", "u1"), ("value", dtype)]
    if resp:
        fields = [("head", f"S{len(b'$%d' % size) + 2}"), *fields, ("tail", "S2")]
    packed = np.empty(len(values), dtype=fields)
    packed["tag"] = tag
    packed["value"] = values
    if resp:
        packed["head"] = b"$%d\r\n" % size
        packed["tail"] = b"\r\n"
    # A void view keeps trailing zero bytes, which a bytes ("S") view would strip.
    out = np.frombuffer(packed.tobytes(), dtype=f"V{packed.itemsize}").astype(object)
    out[np.isnan(values)] = _bulk(b"") if resp else b""  # Feast writes NaN and null alike as empty
    return out.tolist()


def _by_distinct_value(arr: pa.Array, value_type: ValueType, resp: bool) -> list[bytes]:
    """Any type through Feast's own converter, once per distinct value."""
    if pa.types.is_floating(arr.type):  # Feast reads a NaN as missing
        arr = pc.if_else(pc.is_nan(arr), pa.scalar(None, arr.type), arr)
    try:
        encoded = pc.dictionary_encode(arr)
        distinct, indices = encoded.dictionary, encoded.indices
    except pa.ArrowNotImplementedError:  # lists, maps: no dictionary kernel, convert row by row
        distinct, indices = arr, pa.array(np.arange(len(arr)))
    protos = python_values_to_proto_values(distinct.to_numpy(zero_copy_only=False), value_type)
    table = [p.SerializeToString() for p in protos] + [b""]
    table = np.array([_bulk(v) for v in table] if resp else table, dtype=object)
    missing = len(table) - 1
    positions = pc.if_else(arr.is_null(), missing, indices) if arr.null_count else indices
    return table[np.asarray(positions.to_numpy(zero_copy_only=False), dtype=np.int64)].tolist()


def encode_values(arr: pa.Array, value_type: ValueType, resp: bool = False) -> list[bytes]:
    """The serialised `ValueProto` of each value, byte for byte what Feast's materialisation writes
    (as RESP bulk strings with `resp`)."""
    if value_type == ValueType.FLOAT:
        return _fixed_width(pc.cast(arr, pa.float32()), _FLOAT_TAG, "<f4", resp)
    if value_type == ValueType.DOUBLE:
        return _fixed_width(pc.cast(arr, pa.float64()), _DOUBLE_TAG, "<f8", resp)
    return _by_distinct_value(arr, value_type, resp)


def encode_timestamps(arr: pa.Array, resp: bool = False) -> list[bytes]:
    """Serialised protobuf `Timestamp`s of event times, as Feast writes them in `_ts:<view>`."""
    if not pa.types.is_timestamp(arr.type):
        arr = pc.cast(arr, pa.timestamp("us", tz="UTC"))
    if arr.null_count:
        raise ValueError("event timestamps have missing values")
    encoded = pc.dictionary_encode(pc.cast(arr, pa.timestamp("us", tz="UTC")))
    table = []
    for micros in pc.cast(encoded.dictionary, pa.int64()).to_pylist():
        ts = Timestamp()
        ts.FromDatetime(datetime.fromtimestamp(micros // 1_000_000, tz=timezone.utc).replace(
            microsecond=micros % 1_000_000))
        table.append(_bulk(ts.SerializeToString()) if resp else ts.SerializeToString())
    return np.array(table, dtype=object)[encoded.indices.to_numpy()].tolist()


# -- writing ---------------------------------------------------------------------------------------

def _send(pool, commands: list[bytes]) -> None:
    """Sends packed commands on one pooled connection and reads every reply (raising the first
    error); a connection left with unread replies is closed, never returned to the pool."""
    conn = pool.get_connection()
    try:
        conn.send_packed_command(commands)
        for _ in commands:
            conn.read_response()
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


def write_batches(client, config: RepoConfig, feature_view: FeatureView,
                  batches: Iterable[pa.Table | pa.RecordBatch], rows_per_pipeline: int = PIPELINE_ROWS) -> int:
    """Writes rows of a feature view into Redis in Feast's layout; returns the rows written.

    Args:
        client: a redis-py client (Feast's own, from the online store config).
        config: the repo config (project, key serialisation version, `key_ttl_seconds`).
        feature_view: the view; its schema decides the value types written.
        batches: the join key column(s), the view's timestamp field and every feature column,
            one row per entity (if an entity repeats, its last row wins).
        rows_per_pipeline: rows sent per Redis pipeline.

    Rows overwrite whatever the entity had for this view, newer or not: the caller writes the
    snapshot it means to serve (Feast's own writer keeps the newer of the two instead).

    Each pipeline's commands are framed here (the fields are the same in every row, and the
    values come framed from the encoders), and a background thread sends one pipeline and
    reads its replies while the next is encoded, so Redis and this process work at once.
    """
    if feature_view.batch_source is None:
        raise ValueError(f"{feature_view.name}: a feature view without a batch source has no timestamp field")
    name = compute_versioned_name(feature_view, config.registry.enable_online_feature_view_versioning)
    join_keys = [(c.name, c.dtype.to_value_type()) for c in feature_view.entity_columns]
    ts_field = feature_view.batch_source.timestamp_field
    features = feature_columns(feature_view)
    fields = [f"_ts:{name}".encode(), *(_mmh3(f"{name}:{f}") for f, _ in features)]
    project = config.project.encode("utf8")
    ttl = getattr(config.online_store, "key_ttl_seconds", None)
    needed = [*(k for k, _ in join_keys), ts_field, *(f for f, _ in features)]
    # One HSET per row: [header with the key, field, value, field, value, ...]
    head = b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * len(fields))
    parts: list[bytes | None] = [None] * (1 + 2 * len(fields))
    parts[1::2] = [_bulk(f) for f in fields]
    rows = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="redis-writer") as sender:
        pending = None
        for batch in batches:
            missing = [c for c in needed if c not in batch.schema.names]
            if missing:
                raise ValueError(f"{feature_view.name}: columns missing from the batch: {missing}")
            for at in range(0, batch.num_rows, rows_per_pipeline):
                part = batch.slice(at, rows_per_pipeline)
                keys = [k + project for k in entity_keys(part, join_keys, config.entity_key_serialization_version)]
                columns = [encode_timestamps(as_array(part.column(ts_field)), resp=True),
                           *(encode_values(as_array(part.column(f)), t, resp=True) for f, t in features)]
                commands = []
                for key, values in zip(keys, zip(*columns)):
                    parts[0] = head + _bulk(key)
                    parts[2::2] = values
                    commands.append(b"".join(parts))
                    if ttl:
                        commands.append(b"*3\r\n$6\r\nEXPIRE\r\n%s%s" % (_bulk(key), _bulk(b"%d" % ttl)))
                if pending is not None:
                    pending.result()
                pending = sender.submit(_send, client.connection_pool, commands)
                rows += len(keys)
        if pending is not None:
            pending.result()
    return rows
