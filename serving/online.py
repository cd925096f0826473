"""The Feast online store as decisions use it: the link to it (kept up in the background), one
customer's features read straight from our SQLite store, and the short-term context that real-time
events write into it (Feast push).
"""

from __future__ import annotations

import logging
import os
import threading

import pandas as pd

from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP, REALTIME_FEATURES, REALTIME_PUSH_SOURCE, REALTIME_VIEW

log = logging.getLogger("nextbest.serving")

# Which short-term context fields an event sets: (value field, payload key, time field).
REALTIME_EVENT_FIELDS = {
    "salary_received": ("last_salary_amount", "amount", "last_salary_at"),
    "large_deposit": ("last_deposit_amount", "amount", "last_deposit_at"),
    "loan_disbursed": ("last_loan_product", "product_id", "last_loan_at"),
    "product_page_view": ("last_page_view_product", "product_id", "last_page_view_at"),
}


def service_features(store, service_names: list[str]) -> list[tuple[str, list[str]]]:
    """The features that the services read together, by view, each once (the models' services share most)."""
    views: dict[str, list[str]] = {}
    for name in dict.fromkeys(service_names):
        for projection in store.get_feature_service(name).feature_view_projections:
            names = views.setdefault(projection.name, [])
            names += [f.name for f in projection.features if f.name not in names]
    return list(views.items())


def fast_reader(store, tables: list[tuple[str, list[str]]]):
    """A one-customer reader of `tables` (view, features) straight from our SQLite online store, or None
    for any other store (Redis is read through Feast's `get_online_features`)."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from nextbest.feature_repo.online_store import RowSqliteOnlineStore

    online = store._get_provider().online_store
    if not isinstance(online, RowSqliteOnlineStore):
        return None
    views = [(store.get_feature_view(view), names) for view, names in tables]
    config = store.config

    def read(customer_id: str) -> dict | None:
        return online.read_python(config, views, EntityKey(join_keys=[CUSTOMER_ID],
                                                           entity_values=[Value(string_val=customer_id)]))

    return read


def online_reader(store, service_names: list[str]):
    """A one-customer reader (customer id -> {feature: value}, None when no view has the customer) of the
    features that the services read together: from our SQLite store directly, else through Feast."""
    tables = service_features(store, service_names)
    fast = fast_reader(store, tables)
    if fast is not None:
        return fast
    refs = [f"{view}:{name}" for view, names in tables for name in names]

    def read(customer_id: str) -> dict | None:
        values = store.get_online_features(features=refs, entity_rows=[{CUSTOMER_ID: customer_id}]).to_dict()
        out = {k: v[0] for k, v in values.items() if k != CUSTOMER_ID}
        return out if any(v is not None for v in out.values()) else None

    return read


def push_realtime(store, customer_id: str, event: str, payload: dict, at: float) -> bool:
    """Writes a real-time event (one of `REALTIME_EVENT_FIELDS`) into the customer's short-term context.

    The event log stays the source the rules read, so a failed push only costs other readers of
    the online store their freshness (it is logged, without the customer id).
    """
    value_field, key, time_field = REALTIME_EVENT_FIELDS[event]
    try:
        from feast.data_source import PushMode

        refs = [f"{REALTIME_VIEW}:{n}" for n in REALTIME_FEATURES]
        current = store.get_online_features(features=refs, entity_rows=[{CUSTOMER_ID: customer_id}]).to_dict()
        row = {n: current[n][0] for n in REALTIME_FEATURES}
        row[value_field], row[time_field] = payload[key], int(at)
        frame = pd.DataFrame([{CUSTOMER_ID: customer_id, EVENT_TIMESTAMP: pd.Timestamp(at, unit="s", tz="UTC"), **row}])
        store.push(REALTIME_PUSH_SOURCE, frame, to=PushMode.ONLINE)
        return True
    except Exception as exc:  # noqa: BLE001 - the event is logged; the online copy is best effort
        log.warning("short-term context not written to the online store: %s", type(exc).__name__)
        return False


class StoreLink:
    """The online store as the decision engine sees it: connected, or not with the reason, and
    reconnected in the background.

    A store that is unavailable at start (a missing SQLite file, a Redis that does not answer) is
    retried with backoff, and never created empty: decisions are degraded meanwhile, never refused.
    A SQLite store file removed or replaced under the running service is noticed within
    `healthy_every` seconds; answers are degraded until it is back, then read from it again.
    """

    def __init__(self, paths, service_names: list[str]):
        self.paths = paths
        self.service_names = list(service_names)
        self.store = None
        self.read = None
        self.error: str | None = "not connected yet"
        self._identity: tuple[int, int] | None = None
        self._path = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _file_identity(self, path) -> tuple[int, int] | None:
        if path is None:
            return None
        st = os.stat(path)  # FileNotFoundError when it is gone
        return st.st_dev, st.st_ino

    def connect(self) -> bool:
        """One attempt to open the store and read from it; True when it is usable."""
        from nextbest.feature_repo.store import open_store, sqlite_store_file

        try:
            path = sqlite_store_file(self.paths)
            if path is not None and not path.is_file():
                raise FileNotFoundError(f"{path} not found (nextbest features materialize fills it)")
            store = open_store(self.paths)
            read = online_reader(store, self.service_names)
            # The first read builds Feast's lazy state (~100 ms); pay it here, not in a request's budget.
            store.get_online_features(features=store.get_feature_service(self.service_names[0]),
                                      entity_rows=[{CUSTOMER_ID: "__warm_up__"}])
            read("__warm_up__")
            identity = self._file_identity(path)
        except Exception as exc:  # noqa: BLE001 - without the online store, answers are degraded, not refused
            self._down(f"{type(exc).__name__}: {exc}")
            return False
        was_down = self.store is None
        self.read, self._identity, self._path = read, identity, path
        self.store, self.error = store, None
        if was_down:
            log.info("online store connected")
        return True

    def check(self) -> None:
        """Notices a SQLite store file removed or replaced since it was opened."""
        if self.store is None or self._identity is None:
            return
        try:
            same = self._file_identity(self._path) == self._identity  # the path read at connect
        except OSError:
            same = False
        if not same:
            self._down("the online store's file was removed or replaced")

    def _down(self, reason: str) -> None:
        store, self.store, self.read = self.store, None, None
        if store is not None:
            online = store._get_provider().online_store
            if hasattr(online, "close_connection"):
                online.close_connection()
        if self.error != reason:
            log.error("online store unavailable, answering degraded: %s", reason)
        self.error = reason

    def watch(self, healthy_every: float = 2.0, first_retry: float = 1.0, max_backoff: float = 30.0) -> None:
        """Starts the background thread that checks the store and reconnects with backoff."""
        def loop() -> None:
            backoff = first_retry
            while not self._stop.is_set():
                if self.store is None:
                    if self.connect():
                        backoff = first_retry
                        continue
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, max_backoff)
                else:
                    self.check()
                    self._stop.wait(healthy_every)

        self._thread = threading.Thread(target=loop, name="online-store-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
