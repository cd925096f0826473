"""The Feast online store as decisions use it: one customer's features read straight from our SQLite
store, and the short-term context that real-time events write into it (Feast push).
"""

from __future__ import annotations

import logging

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


def fast_reader(store, service):
    """A one-customer reader of the feature service straight from our SQLite online store, or None
    for any other store (Redis is read through Feast's `get_online_features`)."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from nextbest.feature_repo.online_store import RowSqliteOnlineStore

    online = store._get_provider().online_store
    if not isinstance(online, RowSqliteOnlineStore):
        return None
    tables = [(store.get_feature_view(p.name), [f.name for f in p.features]) for p in service.feature_view_projections]
    config = store.config

    def read(customer_id: str) -> dict | None:
        return online.read_python(config, tables, EntityKey(join_keys=[CUSTOMER_ID],
                                                            entity_values=[Value(string_val=customer_id)]))

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
