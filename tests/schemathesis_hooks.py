"""Schemathesis hooks for the service's schema (loaded through `SCHEMATHESIS_HOOKS`).

A `date-time` the service accepts lies between 2000-01-01 and one day ahead of its clock, as the
schema's descriptions say; JSON Schema cannot state a bound relative to now, so valid times are
generated inside that window (invalid ones, of any kind, are still generated for the negative
checks).
"""

from datetime import datetime, timedelta, timezone

import schemathesis
from hypothesis import strategies as st

schemathesis.openapi.format(
    "date-time",
    st.datetimes(min_value=datetime(2000, 1, 1, 0, 0, 1), max_value=datetime.now() + timedelta(hours=12),
                 timezones=st.just(timezone.utc)).map(lambda t: t.isoformat()),
)
