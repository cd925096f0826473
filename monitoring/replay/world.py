"""The world the replay runs in: the offer-response truth and the request traffic.

`Truth` is every customer's true acceptance of every arm (the bank simulator's offer-response
function, with ACTION_TRUTH for the actions that are not products) and changes only when the
driver sells; `make_traffic` draws the fixed request stream (customer, channel, simulated time).
The package docstring says what each models and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from nextbest.constants import CUSTOMER_ID, SNAPSHOT_DATE
from nextbest.simulation.params import TIME_PREFERENCE_WEIGHT
from nextbest.simulation.response import accept_probability

# Share of requests per channel (owned digital channels carry most of the traffic).
CHANNEL_MIX = {"mobile_app": 0.40, "web": 0.20, "email": 0.12, "push": 0.12, "sms": 0.04, "branch": 0.08,
               "call_center": 0.04}
# Relative request volume per hour of day (UTC), per channel: people browse in the evening, the
# bank sends outbound messages in office hours, branches and the call centre have opening hours.
_BROWSING = [0.2] * 7 + [1.0] * 11 + [2.0] * 5 + [0.8]
_OFFICE = [0.0] * 8 + [1.0] * 12 + [0.0] * 4
HOUR_PROFILE = {"mobile_app": _BROWSING, "web": _BROWSING, "email": _OFFICE, "push": _OFFICE, "sms": _OFFICE,
                "branch": [0.0] * 9 + [1.0] * 8 + [0.0] * 7, "call_center": _OFFICE}
# Unprompted-equivalent P(take it) of the actions that are not products (see the package docstring).
ACTION_TRUTH = {"retention_call": 0.02, "payment_help": 0.01}
DAY = 86400.0


# -- the truth -------------------------------------------------------------------------------------

@dataclass
class Truth:
    """True acceptance of every arm for every customer of the latest snapshot.

    Attributes:
        customer_ids: the customers, (n,).
        arms: products (catalogue order) then actions.
        p_next: true P(acquire next month) per customer and product, (n, P); actions use ACTION_TRUTH.
        affinity: latent digital affinity per customer, (n,).
        snapshot: the snapshot date the state is frozen at.
        categories: product category per product (the channel fit of the offer-response truth).
        preferred_hour: latent preferred contact hour per customer, (n,); None or NaN: no time
            preference (a bank generated without one).
        time_preference: the logit amplitude of the preferred hour in the offer-response truth.
    """

    customer_ids: list[str]
    products: list[str]
    actions: dict[str, float]
    p_next: np.ndarray
    affinity: np.ndarray
    snapshot: datetime
    categories: dict[str, str] = field(default_factory=dict)
    preferred_hour: np.ndarray | None = None
    time_preference: float = TIME_PREFERENCE_WEIGHT
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {c: i for i, c in enumerate(self.customer_ids)}
        self.arms = list(self.products) + list(self.actions)
        self._col = {a: i for i, a in enumerate(self.arms)}
        n = len(self.customer_ids)
        # Actions' unprompted-equivalent probability, as extra columns of one (n, arms) table.
        self._p = np.hstack([self.p_next.astype(float),
                             np.tile(np.array([self.actions[a] for a in self.actions], dtype=float), (n, 1))])

    @classmethod
    def load(cls, truth_dir: Path, products: list[str], actions: dict[str, float] | None = None,
             categories: dict[str, str] | None = None) -> "Truth":
        """The latest snapshot of `truth/acquisition.parquet`, the latent affinity and, where the bank
        has one, the preferred contact hour with its weight (`truth/latent.parquet` and its metadata)."""
        import pandas as pd
        import pyarrow.parquet as pq

        acq = pd.read_parquet(truth_dir / "acquisition.parquet")
        latest = acq[SNAPSHOT_DATE].max()
        acq = acq[acq[SNAPSHOT_DATE] == latest].sort_values(CUSTOMER_ID)
        schema = pq.read_schema(truth_dir / "latent.parquet")
        timed = "preferred_hour" in schema.names
        columns = [CUSTOMER_ID, "digital_affinity"] + (["preferred_hour"] if timed else [])
        latent = pd.read_parquet(truth_dir / "latent.parquet", columns=columns).set_index(CUSTOMER_ID)
        latent = latent.reindex(acq[CUSTOMER_ID])
        affinity = latent["digital_affinity"].to_numpy(float)
        weight = (schema.metadata or {}).get(b"time_preference")
        return cls(acq[CUSTOMER_ID].astype(str).tolist(), list(products),
                   dict(ACTION_TRUTH if actions is None else actions),
                   acq[products].to_numpy(np.float64), np.nan_to_num(affinity, nan=0.5),
                   pd.Timestamp(latest).to_pydatetime().replace(tzinfo=timezone.utc), dict(categories or {}),
                   latent["preferred_hour"].to_numpy(float) if timed else None,
                   TIME_PREFERENCE_WEIGHT if weight is None else float(weight))

    def column(self, arm: str) -> int:
        return self._col[arm]

    def acceptance(self, customer: int, arms: list[str], channel: str, hour: int, weekday: int) -> np.ndarray:
        """True P(accept) of each offer for one customer in one request context, (len(arms),)."""
        n = len(arms)
        if n == 0:
            return np.zeros(0)
        p = self._p[customer, [self._col[a] for a in arms]]
        preferred = None if self.preferred_hour is None else np.full(n, self.preferred_hour[customer])
        return accept_probability(p, np.full(n, channel), np.full(n, hour), np.full(n, weekday),
                                  np.full(n, self.affinity[customer]), [self.categories.get(a) for a in arms],
                                  preferred, self.time_preference)

    def acceptance_grid(self, customers: np.ndarray, arms: list[str], channel: str, hours: np.ndarray,
                        weekday: int | np.ndarray) -> np.ndarray:
        """True P(accept) for many customers at once, each arm and send hour (what `acceptance` gives one
        customer at a time).

        Args:
            customers: indices into `customer_ids`, (n,).
            arms: products or actions, (A,).
            channel: one channel for all.
            hours: send hour per customer, (n,), or per customer and slot, (n, S).
            weekday: 0 = Monday .. 6 = Sunday, one for all or per customer, (n,).

        Returns:
            (n, A) for hours (n,), (n, A, S) for hours (n, S).
        """
        customers = np.asarray(customers, dtype=np.int64)
        hours = np.asarray(hours, dtype=float)
        per_slot = hours if hours.ndim == 2 else hours.reshape(-1, 1)
        weekday = np.asarray(weekday)
        weekday = weekday.reshape(-1, 1, 1) if weekday.ndim == 1 else weekday
        p = self._p[np.ix_(customers, [self._col[a] for a in arms])][:, :, None]  # (n, A, 1)
        categories = np.array([self.categories.get(a) for a in arms], dtype=object).reshape(1, -1, 1)
        preferred = None if self.preferred_hour is None else self.preferred_hour[customers].reshape(-1, 1, 1)
        out = accept_probability(p, np.array(channel), per_slot[:, None, :], weekday,
                                 self.affinity[customers].reshape(-1, 1, 1), categories, preferred,
                                 self.time_preference)  # (n, A, S)
        return out if hours.ndim == 2 else out[:, :, 0]

    def unprompted(self, customers: np.ndarray, arms: list[str]) -> np.ndarray:
        """True P(acquire this month without any offer), (n, A): a product's `p_next` (0 once acquired), 0
        for an action (nothing happens without it)."""
        out = self._p[np.ix_(np.asarray(customers, dtype=np.int64), [self._col[a] for a in arms])]
        return np.where(np.array([a in self.actions for a in arms], dtype=bool)[None, :], 0.0, out)

    def uplift_grid(self, customers: np.ndarray, arms: list[str], channel: str, hours: np.ndarray,
                    weekday: int | np.ndarray) -> np.ndarray:
        """True uplift of an offer: P(acquire | offer) - P(acquire | no offer), shaped as `acceptance_grid`.

        The decomposition: one uniform draw U per customer and product decides both what the
        customer does unprompted (acquires this month iff U < p0, p0 = `unprompted`) and how they
        answer an offer (accept iff U < a, a = `acceptance_grid`). An offer therefore never stops an
        acquisition that would have happened, P(acquire | offer) = max(a, p0), and an accepted offer
        is incremental iff p0 <= U < a: the uplift is max(a - p0, 0). A customer who accepts a
        product they would have acquired anyway that month is a conversion, not an incremental one.
        """
        a = self.acceptance_grid(customers, arms, channel, hours, weekday)
        p0 = self.unprompted(customers, arms)
        return np.maximum(a - (p0[:, :, None] if a.ndim == 3 else p0), 0.0)

    def acquire(self, customer: int, arm: str) -> None:
        """The customer now holds the product: no more unprompted acquisition of it."""
        if arm in self.products:
            self._p[customer, self._col[arm]] = 0.0


# -- the traffic -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Traffic:
    """The request stream, in time order: customer (index into Truth), channel, epoch seconds."""

    customer: np.ndarray
    channel: np.ndarray
    at: np.ndarray
    days: float

    def __len__(self) -> int:
        return len(self.customer)

    def when(self, t: int) -> datetime:
        return datetime.fromtimestamp(float(self.at[t]), tz=timezone.utc)


def make_traffic(n_customers: int, steps: int, seed: int, start: datetime, visits_per_week: float = 1.0,
                 customers: int | None = None, mix: dict[str, float] | None = None) -> Traffic:
    """A fixed request stream (the same for every policy with the same seed).

    Args:
        n_customers: customers in the truth table; requests come from all, or from a random
            sample of `customers` of them.
        steps: number of requests.
        seed: the stream's seed.
        start: the first simulated day (midnight UTC).
        visits_per_week: average requests per customer and week; sets the simulated period.
        mix: share of requests per channel (default CHANNEL_MIX).
    """
    rng = np.random.default_rng([seed, 0])
    mix = mix or CHANNEL_MIX
    pool = (np.arange(n_customers) if customers is None or customers >= n_customers
            else np.sort(rng.choice(n_customers, customers, replace=False)))
    customer = rng.choice(pool, steps)
    names = list(mix)
    channel = rng.choice(np.array(names, dtype=object), steps, p=np.array([mix[c] for c in names]) / sum(mix.values()))
    days = max(steps / (len(pool) * visits_per_week / 7.0), 1.0)
    day = np.floor(rng.uniform(0, days, steps))
    hour = np.zeros(steps)
    for c in names:
        rows = np.flatnonzero(channel == c)
        weights = np.asarray(HOUR_PROFILE[c], dtype=float)
        hour[rows] = rng.choice(24, len(rows), p=weights / weights.sum())
    seconds = rng.uniform(0, 3600, steps)
    at = start.timestamp() + day * DAY + hour * 3600 + seconds
    order = np.argsort(at, kind="stable")
    at = at[order]
    # Strictly increasing times: the decision log orders by time, ties would make that ambiguous.
    at = np.maximum.accumulate(at + np.arange(steps) * 1e-6)
    return Traffic(customer[order], channel[order], at, days)

