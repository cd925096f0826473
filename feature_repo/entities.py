"""Feast entities: the customer, keyed by `customer_id`."""

from __future__ import annotations

from feast import Entity, ValueType

from nextbest.constants import CUSTOMER_ID, ENTITY_NAME


def customer_entity() -> Entity:
    return Entity(name=ENTITY_NAME, join_keys=[CUSTOMER_ID], value_type=ValueType.STRING,
                  description="A bank customer (client, former client or prospect).")
