"""The synthetic bank: customers, monthly holdings, transactions, interactions, offers, truth.

Everything is vectorised over customers and products; the only loop is over months, and each
month is emitted as a batch of Arrow tables so that large banks stream to disk instead of
accumulating in memory.

The truth kept for every customer-month: the probability of acquiring each product next month
(`truth/acquisition.parquet`), the churn hazard (`truth/churn.parquet`), the latent traits
(`truth/latent.parquet`) and the life events (`truth/life_events.parquet`).

Speed (1,000,000 customers x 18 months written to parquet in about 90 s of CPU and under 2 GB;
benchmarks/bench_generate.py, docs/simulator.md) comes from three habits: customer x product
state is float32 and updated in place; string columns are never built in Python or numpy, only
as integer codes turned into Arrow strings at the end (`pa.Array.take` on a small dictionary, a
byte gather for the fixed-width customer ids, Arrow's int-to-string cast for running ids); dates
are integer datetime64 arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from nextbest.config import Catalogue
from nextbest.constants import CHANNELS, DEFAULT_SEED
from nextbest.simulation.drift import DriftSpec
from nextbest.simulation.params import CATEGORY_BEHAVIOUR, NEEDS, PRODUCT_BEHAVIOUR, SPEND_CATEGORIES
from nextbest.simulation.response import accept_probability

REGIONS = ("north", "south", "east", "west", "capital", "islands")
ENTRY_PRODUCTS = ("current_account", "e_account")
SALARY_PRODUCTS = ("payroll_account", "salary_project")
# Transaction kinds in the order they are emitted, with their direction.
TXN_CATEGORIES = ("salary", "transfer_in", *SPEND_CATEGORIES, "transfer_out")
TXN_DIRECTIONS = ("in", "in", *("out",) * len(SPEND_CATEGORIES), "out")
LIFE_EVENTS = ("salary_rise", "large_deposit", "new_loan", "birthday")
# Interaction kinds in the order `_interactions_table` receives their counts, page views last.
EVENT_KINDS = ("login_app", "login_web", "call", "complaint", "page_view")
RESPONSES = ("accept", "reject", "no_response")
_DAY = np.timedelta64(1, "D")
_MAX_STRING_BYTES = 2**31 - 1  # of one Arrow string array (32-bit offsets)


def last_month_end(today: pd.Timestamp | None = None) -> pd.Timestamp:
    """The last complete month end before `today` (the bank's 'now')."""
    today = pd.Timestamp.today().normalize() if today is None else pd.Timestamp(today)
    return (today.replace(day=1) - pd.Timedelta(days=1)).normalize()


@dataclass(frozen=True)
class BankSpec:
    """Size and shape of a simulated bank."""

    n_customers: int = 2000
    n_months: int = 12
    seed: int = DEFAULT_SEED
    end: pd.Timestamp = field(default_factory=last_month_end)
    prospect_share: float = 0.10
    former_share: float = 0.04
    silent_share: float = 0.03
    missing_income_share: float = 0.06
    late_transaction_share: float = 0.01
    duplicate_share: float = 0.003
    offer_share: float = 0.05
    drift: DriftSpec | None = None  # injected drift (simulation.drift); None: the bank as calibrated

    def month_ends(self) -> pd.DatetimeIndex:
        return pd.date_range(end=pd.Timestamp(self.end), periods=self.n_months, freq="ME")


@dataclass
class MonthBatch:
    """Rows produced for one month, keyed by output table name (`raw/...` or `truth/...`)."""

    month: int
    tables: dict[str, pa.Table]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _sigmoid_(z: np.ndarray) -> np.ndarray:
    """Sigmoid in place (no temporaries: the (customers, products) arrays are the big ones)."""
    np.negative(z, out=z)
    np.exp(z, out=z)
    z += 1
    return np.reciprocal(z, out=z)


def _labels(values: tuple[str, ...] | list[str]) -> pa.Array:
    return pa.array(list(values), pa.string())


def _decode(labels: pa.Array, codes: np.ndarray) -> pa.Array:
    """Integer codes -> Arrow strings (`labels[code]`); negative codes become nulls."""
    missing = codes < 0
    return labels.take(pa.array(codes, mask=missing if missing.any() else None))


def _running_ids(prefix: str, start: int, count: int, width: int = 0) -> pa.Array:
    """`prefix` + the integers start.. start+count-1 (zero-padded to `width`), as Arrow strings."""
    digits = pc.cast(pa.array(np.arange(start, start + count, dtype=np.int64)), pa.string())
    if width:
        digits = pc.utf8_lpad(digits, width, "0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _days_after(start: np.datetime64 | np.ndarray, days: np.ndarray) -> np.ndarray:
    """`start` + `days` (whole days) as datetime64[us] (the unit these columns always had),
    in integer arithmetic."""
    us = days * np.int64(86_400_000_000)
    us += np.asarray(start, dtype="datetime64[us]").view(np.int64)
    return us.view("datetime64[us]")


def _timestamps(values: np.ndarray) -> pa.Array:
    return pa.array(values.astype("datetime64[ns]", copy=False))


def _constant_timestamps(value: np.datetime64, count: int) -> pa.Array:
    return pa.array(np.full(count, value, dtype="datetime64[ns]"))


class _Bank:
    """Mutable state of the simulation; one instance per `simulate` call."""

    def __init__(self, catalogue: Catalogue, spec: BankSpec):
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        self.products = catalogue.ids
        self.pidx = {p: i for i, p in enumerate(self.products)}
        self.product_labels = _labels(self.products)
        self.dates = spec.month_ends()
        self.month_start = self.dates.values.astype("datetime64[M]").astype("datetime64[ns]")
        n, n_prod, rng = spec.n_customers, len(self.products), self.rng
        self.n, self.P = n, n_prod

        # Customer ids C0000001.. all have the same width, so taking them for millions of rows is a
        # byte gather (`_customer_ids`) rather than a string take.
        width = max(7, len(str(n)))
        self.ids = _running_ids("C", 1, n, width)
        self._id_width = width + 1
        self._id_bytes = np.frombuffer(self.ids.buffers()[2], dtype=f"S{self._id_width}", count=n)

        # Demographics.
        age0 = np.clip(rng.normal(44, 15, n), 18, 88)
        self.birth_month = rng.integers(1, 13, n)
        start = self.dates[0]
        self.birth_year = (start.year - age0).astype(int)
        self.gender = rng.choice(np.array(["F", "M"]), n)
        self.region = rng.choice(np.array(REGIONS), n, p=[0.18, 0.2, 0.15, 0.17, 0.22, 0.08])
        life_curve = -((age0 - 50) / 25) ** 2
        self.income = np.exp(rng.normal(10.2 + 0.35 * life_curve, 0.5, n))
        income_z = (np.log(self.income) - 10.1) / 0.55
        self.digital = np.clip(_sigmoid(1.8 - 0.07 * (age0 - 40) + rng.normal(0, 0.8, n)), 0.02, 0.98)

        # Latent needs in [0, 1], driven by demographics plus individual noise.
        needs = np.empty((n, len(NEEDS)), dtype=np.float32)
        needs[:, 0] = _sigmoid(0.9 * income_z + rng.normal(0, 1, n))  # saving
        needs[:, 1] = _sigmoid(2.0 * (age0 < 66) - 1.0 + 0.5 * income_z + rng.normal(0, 1, n))  # income
        needs[:, 2] = _sigmoid((age0 - 52) / 9 + 0.5 * income_z + rng.normal(0, 1, n))  # preservation
        needs[:, 3] = _sigmoid(-(age0 - 36) / 11 + 0.3 * income_z + rng.normal(0, 1, n))  # credit
        needs[:, 4] = rng.beta(5, 2, n)  # everyday
        self.needs = needs

        weights = np.zeros((len(NEEDS), n_prod), dtype=np.float32)
        self.base = np.zeros(n_prod, dtype=np.float32)
        init_logit = np.zeros(n_prod, dtype=np.float32)
        self.close_rate = np.zeros(n_prod, dtype=np.float32)
        category = catalogue.categories()
        for j, p in enumerate(self.products):
            # A product the simulator has no behaviour for behaves like its category's representative.
            base, init, loadings, close = PRODUCT_BEHAVIOUR.get(p) or CATEGORY_BEHAVIOUR[category[p]]
            self.base[j], init_logit[j], self.close_rate[j] = base, init, close
            for need, w in loadings.items():
                weights[NEEDS.index(need), j] = w
        self.weights = weights
        # Unobserved taste per customer and product: the part no feature can fully recover.
        self.taste = rng.standard_normal((n, n_prod), dtype=np.float32)
        self.taste *= 0.5

        self.min_age = np.array([catalogue.by_id()[p].eligibility.min_age for p in self.products])
        self.max_age = np.array([catalogue.by_id()[p].eligibility.max_age for p in self.products])
        self.requires = [[self.pidx[r] for r in catalogue.by_id()[p].eligibility.requires] for p in self.products]
        self.categories = np.array([category[p] for p in self.products])
        self.loan_cols = np.flatnonzero(self.categories == "loan").tolist()  # the credit cooldown's products

        # Lifecycle at the start of the window.
        u = rng.random(n)
        self.is_prospect = u < spec.prospect_share
        former = (u >= spec.prospect_share) & (u < spec.prospect_share + spec.former_share)
        self.silent = rng.random(n) < spec.silent_share
        tenure_months = rng.integers(1, 240, n)
        self.join_month = np.where(self.is_prospect, 10_000, -tenure_months)  # month index of joining

        # Initial holdings: needs-driven, with the entry account first and prerequisites respected.
        z0 = needs @ weights
        z0 *= 1.2
        z0 += init_logit + self.taste
        z0 -= needs.mean(1, keepdims=True) @ weights.sum(0, keepdims=True) * 0.6
        held = rng.random((n, n_prod), dtype=np.float32) < _sigmoid_(z0)
        del z0
        self.held = self._respect_requirements(held)
        none_held = ~self.held.any(1) & ~self.is_prospect & ~former
        self.held[none_held, self.pidx.get("current_account", 0)] = True
        self.held[self.is_prospect | former] = False
        self._age_mask(age0)
        self.ever_client = ~self.is_prospect

        self.boost = np.zeros((n, n_prod), dtype=np.float32)
        self.months_since_loan = np.full(n, 99)
        self.engagement = np.clip(rng.beta(6, 2, n), 0, 1)
        self.engagement[self.silent] = 0.0
        self.eng_hist = [self.engagement.copy()] * 3
        self.dissat = rng.beta(1, 12, n)
        self.balance = self.income / 12 * rng.gamma(2, 0.8, n) * (0.5 + needs[:, 0])
        self.deposit_balance = self.income * needs[:, 0] * rng.gamma(2, 0.5, n)
        self.complaints_hist = [np.zeros(n)] * 3
        self.opt_out = rng.random(n) < 0.07
        self.consent = {c: rng.random(n) < p for c, p in
                        (("email", 0.7), ("push", 0.55), ("sms", 0.5), ("call", 0.35))}
        self.offer_seq = 0
        self.txn_seq = 0

    def _cols(self, products: tuple[str, ...]) -> list[int]:
        return [self.pidx[p] for p in products if p in self.pidx]

    def _product_mask(self, products: tuple[str, ...]) -> np.ndarray:
        mask = np.zeros(self.P, dtype=bool)
        mask[self._cols(products)] = True
        return mask

    def _customer_ids(self, idx: np.ndarray) -> pa.Array | pa.ChunkedArray:
        """`self.ids.take(idx)`, as a gather of fixed-width byte strings (several times faster)."""
        rows = _MAX_STRING_BYTES // self._id_width - 1  # 32-bit offsets: chunk anything larger
        if len(idx) > rows:
            return pa.chunked_array([self._customer_ids(idx[i:i + rows]) for i in range(0, len(idx), rows)])
        data = self._id_bytes[idx]
        offsets = np.arange(0, (len(idx) + 1) * self._id_width, self._id_width, dtype=np.int32)
        return pa.Array.from_buffers(pa.string(), len(idx), [None, pa.py_buffer(offsets), pa.py_buffer(data)])

    def _respect_requirements(self, held: np.ndarray) -> np.ndarray:
        for j, reqs in enumerate(self.requires):
            if reqs:
                held[:, j] &= held[:, reqs].any(1)
        return held

    def age_at(self, month: int) -> np.ndarray:
        date = self.dates[month]
        return date.year - self.birth_year - (date.month < self.birth_month)

    def _age_mask(self, age: np.ndarray) -> None:
        ok = (age[:, None] >= self.min_age) & (age[:, None] <= self.max_age)
        self.held &= ok | ~ok.any(0)  # never drop a product nobody could hold

    def eligible(self, month: int) -> np.ndarray:
        age = self.age_at(month)
        ok = (age[:, None] >= self.min_age) & (age[:, None] <= self.max_age)
        for j, reqs in enumerate(self.requires):
            if reqs:
                ok[:, j] &= self.held[:, reqs].any(1)
        return ok

    # -- one month ---------------------------------------------------------------------------

    def intent(self, t: int, taste: bool = True) -> np.ndarray:
        """Logit of next month's acquisition hazard, shape (n, P), float32, built in place: needs,
        the customer's taste, life-event boosts, tenure and loan history.

        With `taste=False`, everything but the taste: the most that any model of the customer's
        observable behaviour could know (benchmarks/bench_models.py measures that ceiling).
        """
        tenure = t - self.join_month
        intent = self.needs @ self.weights
        intent += self.base
        if taste:
            intent += self.taste
        intent += self.boost
        intent[tenure < 6] += 0.6
        recent_loan = self.months_since_loan < 6
        intent[np.ix_(recent_loan, self.loan_cols)] -= 2.5
        return intent

    def step(self, t: int) -> MonthBatch:
        rng, n = self.rng, self.n
        drift = self.spec.drift
        if drift is not None:
            drift.start_month(self, t)
        rate, spend_factor = drift.rates(t, SPEND_CATEGORIES) if drift is not None else ({}, None)
        is_client = self.held.any(1)
        joined = self.join_month <= t
        known = joined | (self.is_prospect & (rng.random(n) < 0.35))  # prospects seen on web/branch
        former = self.ever_client & ~is_client
        eligible = self.eligible(t)

        intent = self.intent(t)
        p_acq = _sigmoid_(intent.copy())
        p_acq *= eligible & ~self.held & is_client[:, None]

        # Prospects join, former clients come back, both through an entry product.
        p_join = np.where(self.is_prospect & ~joined, 0.05, 0.0) + np.where(former, 0.01, 0.0)
        for name, share in (("current_account", 0.75), ("e_account", 0.25)):
            if name in self.pidx:
                p_acq[:, self.pidx[name]] = np.where(is_client, p_acq[:, self.pidx[name]], p_join * share)

        # Activity this month.
        active = is_client & ~self.silent
        eng = self.engagement * active
        logins_app = rng.poisson(18 * self.digital * eng * rate.get("login_app", 1.0))
        logins_web = rng.poisson((6 * (1.1 - self.digital) * eng + 0.8 * (self.is_prospect & known))
                                 * rate.get("login_web", 1.0))
        intent += 3.2
        view_rate = _sigmoid_(intent)  # reuses intent's memory: shape (n, P)
        view_rate *= (3.0 * (self.digital * 0.8 + 0.2) * (active | (known & ~is_client))).astype(np.float32)[:, None]
        if drift is not None:
            drift.views(self, t, view_rate)
        views = rng.poisson(view_rate)
        del intent, view_rate
        complaints = rng.poisson((0.01 + 0.6 * self.dissat) * active)
        calls = rng.poisson((0.08 + 0.5 * self.dissat) * active * rate.get("call", 1.0))

        monthly_income = self.income / 12 * rng.normal(1, 0.03, n)
        has_salary = self.held[:, self._cols(SALARY_PRODUCTS)].any(1)
        salary = np.where(has_salary & active, monthly_income, 0.0)
        other_in = np.where(~has_salary & active & (rng.random(n) < 0.7), monthly_income * 0.6, 0.0)
        shares = np.array([0.22, 0.12, 0.08, 0.07, 0.12])
        spend = (monthly_income[:, None] * shares * (0.5 + self.needs[:, 4:5]) * eng[:, None]
                 * rng.lognormal(0, 0.25, (n, len(SPEND_CATEGORIES))))
        if spend_factor is not None:
            spend *= spend_factor
        outflow_mood = np.clip(0.05 + 0.6 * (1 - self.engagement) + 0.4 * self.dissat, 0, 1.5)
        transfer_out = np.where(active, monthly_income * outflow_mood * rng.lognormal(0, 0.3, n), 0.0)
        inflow = salary + other_in
        outflow = spend.sum(1) + transfer_out
        self.balance = np.maximum(0.0, self.balance + inflow - outflow)
        outflow_ratio = np.clip(outflow / (inflow + 50.0), 0, 5)

        # Churn hazard: complaints, falling engagement and outflows raise it; product load lowers it.
        self.complaints_hist = self.complaints_hist[1:] + [complaints]
        complaints_3m = np.sum(self.complaints_hist, axis=0)
        eng_drop = np.clip(self.eng_hist[0] - self.engagement, 0, 1)
        n_products = self.held.sum(1)
        churn_logit = (-7.0 + 0.9 * complaints_3m + 4.0 * eng_drop + 0.9 * np.minimum(outflow_ratio, 3)
                       - 0.3 * n_products + 2.0 * self.dissat)
        p_churn = np.where(is_client, _sigmoid(churn_logit), 0.0)

        tables: dict[str, pa.Table] = {}
        offers, forced = self._offers(t, is_client, eligible, p_acq)
        tables["raw/holdings"] = self._holdings_table(t)
        tables["raw/transactions"] = self._transactions_table(
            t, np.stack([salary, other_in, *spend.T, transfer_out]))
        tables["raw/interactions"] = self._interactions_table(
            t, (logins_app, logins_web, calls, complaints), views)
        del views
        if offers is not None:
            tables["raw/offers"] = offers
        rows = np.flatnonzero(known | self.ever_client)
        # The churn label's event, holding nothing next month: churning, or else every held product
        # closing with nothing acquired (offers already in p_acq). Drops for unmet requirements are left out.
        p_gone = np.where(is_client, p_churn + (1 - p_churn) * self._p_empty(p_acq), 0.0)
        tables["truth/acquisition"], tables["truth/churn"] = self._truth_tables(t, rows, p_acq, p_churn, p_gone)

        # Transition to next month.
        acquire = rng.random(p_acq.shape, dtype=np.float32) < p_acq
        acquire |= forced
        if drift is not None:
            drift.acquisitions(self, t, acquire, eligible, is_client)
        del p_acq, forced
        close_p = self.close_rate * self._close_multiplier()[:, None]
        close = rng.random(self.held.shape, dtype=np.float32) < close_p
        del close_p
        close &= self.held
        churn = rng.random(n) < p_churn
        new_held = self.held & ~close
        new_held |= acquire
        new_held[churn] = False
        newly_joined = ~is_client & new_held.any(1)
        self.join_month = np.where(newly_joined & self.is_prospect & ~joined, t + 1, self.join_month)
        self.ever_client |= new_held.any(1)
        took_loan = (acquire[:, self.loan_cols].any(1)) if self.loan_cols else np.zeros(n, bool)
        del acquire
        self.months_since_loan = np.where(took_loan, 0, self.months_since_loan + 1)
        self.held = self._respect_requirements(new_held)
        tables["truth/life_events"] = self._life_events(t, took_loan)

        self.boost *= 0.7
        incident = rng.random(n) < 0.015
        self.dissat = np.clip(self.dissat * 0.85 + incident * 0.5, 0, 1)
        drift = rng.normal(0, 0.05, n) + 0.03 * (0.7 - self.engagement) - 0.25 * incident
        self.eng_hist = self.eng_hist[1:] + [self.engagement.copy()]
        self.engagement = np.where(self.silent, 0.0, np.clip(self.engagement + drift, 0, 1))
        self.deposit_balance *= 1.002
        return MonthBatch(t, tables)

    def _offers(self, t: int, is_client: np.ndarray, eligible: np.ndarray,
                p_acq: np.ndarray) -> tuple[pa.Table | None, np.ndarray]:
        """Offers from past campaigns, answered by the offer-response truth.

        Updates `p_acq` in place so the truth accounts for the offer, and returns the offers
        table and the (customer, product) pairs acquired by accepting one.
        """
        rng, n = self.rng, self.n
        date = self.dates[t]
        forced = np.zeros((n, self.P), dtype=bool)
        offered = is_client & ~self.opt_out & (rng.random(n) < self.spec.offer_share)
        off_idx = np.flatnonzero(offered)
        if not len(off_idx):
            return None, forced
        cand = (~self.held[off_idx]) & eligible[off_idx]
        prod = (cand * rng.random(cand.shape)).argmax(1)
        has_cand = cand.any(1)
        off_idx, prod = off_idx[has_cand], prod[has_cand]
        k = len(off_idx)
        channel_code = rng.integers(0, len(CHANNELS), k)
        channel = np.array(CHANNELS)[channel_code]
        day = rng.integers(1, date.day + 1, k)
        hour = rng.integers(8, 22, k)
        minute = rng.integers(0, 60, k)
        offered_at = (self.month_start[t] + (day - 1) * _DAY + hour * np.timedelta64(1, "h")
                      + minute * np.timedelta64(1, "m"))
        weekday = (offered_at.astype("datetime64[D]").astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
        p_accept = accept_probability(p_acq[off_idx, prod], channel, hour, weekday, self.digital[off_idx],
                                      self.categories[prod])
        accepted = rng.random(k) < p_accept
        responded = accepted | (rng.random(k) < 0.45)
        response = np.where(accepted, 0, np.where(responded, 1, 2))
        forced[off_idx[accepted], prod[accepted]] = True
        # The answer is known by the month end: an accepted offer is acquired next month for sure;
        # after any other answer the unprompted hazard stands. The truth is that probability.
        p_acq[off_idx[accepted], prod[accepted]] = 1.0
        table = pa.table({
            "offer_id": _running_ids("O", self.offer_seq, k, width=9),
            "customer_id": self._customer_ids(off_idx),
            "product_id": _decode(self.product_labels, prod),
            "channel": _decode(_labels(CHANNELS), channel_code),
            "offered_at": _timestamps(offered_at),
            "response": _decode(_labels(RESPONSES), response),
        })
        self.offer_seq += k
        return table, forced

    def _close_multiplier(self) -> np.ndarray:
        """Per customer, what a product's monthly close rate is multiplied by: dissatisfaction
        raises it up to 4-fold. float32, (n,)."""
        return (1 + 3 * self.dissat).astype(np.float32)

    def _p_empty(self, p_acq: np.ndarray) -> np.ndarray:
        """P(every held product closes and none is acquired next month | no churn), per customer,
        with the closing probabilities the month's transition draws from."""
        out = np.ones(self.n)
        scale = self._close_multiplier()
        for j in range(len(self.products)):  # column by column: no (customers x products) temporary
            close = np.clip(self.close_rate[j] * scale, 0.0, 1.0)
            out *= np.where(self.held[:, j], close, 1.0) * (1.0 - p_acq[:, j])
        return out

    def _truth_tables(self, t: int, rows: np.ndarray, p_acq: np.ndarray,
                      p_churn: np.ndarray, p_gone: np.ndarray) -> tuple[pa.Table, pa.Table]:
        ids = self._customer_ids(rows)
        snapshot = _constant_timestamps(self.dates.values[t], len(rows))
        by_product = np.ascontiguousarray(p_acq[rows].T)  # (P, rows): one contiguous column each
        acquisition = pa.table({"customer_id": ids, "snapshot_date": snapshot,
                                **{p: pa.array(by_product[j]) for j, p in enumerate(self.products)}})
        churn = pa.table({"customer_id": ids, "snapshot_date": snapshot,
                          "p_churn": pa.array(p_churn[rows].astype(np.float32)),
                          "p_gone": pa.array(p_gone[rows].astype(np.float32))})
        return acquisition, churn

    def _life_events(self, t: int, took_loan: np.ndarray) -> pa.Table:
        rng, n = self.rng, self.n
        date = self.dates[t]
        rise = self.held.any(1) & (rng.random(n) < 0.01)
        self.income = np.where(rise, self.income * 1.15, self.income)
        self._boost(rise, ("savings_account", "term_deposit", "investment_funds", "brokerage"), 1.4)
        # A higher income also makes a bigger purchase affordable.
        self._boost(rise, ("mortgage", "car_loan"), 1.0)
        deposit = self.held.any(1) & (rng.random(n) < 0.006)
        self.balance = np.where(deposit, self.balance + self.income * 0.5, self.balance)
        self._boost(deposit, ("term_deposit", "investment_funds", "premium_package"), 2.0)
        self._boost(took_loan, ("life_insurance", "home_insurance"), 1.3)
        birthday = self.birth_month == ((date.month % 12) + 1)
        turning = birthday & np.isin(self.age_at(t) + 1, (30, 40, 50, 55))
        self._boost(turning, ("pension_plan", "life_insurance"), 1.0)
        masks = (rise, deposit, took_loan, birthday)  # in the order of LIFE_EVENTS
        idx = np.concatenate([np.flatnonzero(m) for m in masks])
        kind = np.repeat(np.arange(len(masks)), [int(m.sum()) for m in masks])
        next_month = (date + pd.Timedelta(days=1)).to_datetime64()
        return pa.table({
            "customer_id": self._customer_ids(idx),
            "month_start": _constant_timestamps(next_month, len(idx)),
            "event": _decode(_labels(LIFE_EVENTS), kind),
        })

    def _boost(self, mask: np.ndarray, products: tuple[str, ...], amount: float) -> None:
        cols = self._cols(products)
        if cols and mask.any():
            self.boost[np.ix_(mask, cols)] += amount

    def _holdings_table(self, t: int) -> pa.Table:
        cust, prod = np.nonzero(self.held)
        balance = np.zeros(len(cust))
        # Balances by catalogue category, so that a bank's own products carry them too.
        is_account = (self.categories == "account")[prod]
        is_saving = np.isin(self.categories, ("deposit", "investment"))[prod]
        is_loan = (self.categories == "loan")[prod]
        n_acc = np.bincount(cust[is_account], minlength=self.n).clip(1)
        n_sav = np.bincount(cust[is_saving], minlength=self.n).clip(1)
        balance[is_account] = self.balance[cust[is_account]] / n_acc[cust[is_account]]
        balance[is_saving] = self.deposit_balance[cust[is_saving]] / n_sav[cust[is_saving]]
        balance[is_loan] = -self.income[cust[is_loan]] * 0.8
        return pa.table({
            "customer_id": self._customer_ids(cust),
            "snapshot_date": _constant_timestamps(self.dates.values[t], len(cust)),
            "product_id": _decode(self.product_labels, prod),
            "balance": pa.array(np.round(balance, 2)),
        })

    def _transactions_table(self, t: int, amounts: np.ndarray) -> pa.Table:
        """One row per customer and transaction kind with an amount; `amounts` is (kinds, n)."""
        rng, spec = self.rng, self.spec
        kind, cust = np.nonzero(amounts > 0.5)  # kind-major, as TXN_CATEGORIES
        m = len(cust)
        txn_date = _days_after(self.month_start[t], rng.integers(0, self.dates[t].day, m))
        lag = rng.integers(0, 3, m)
        late = rng.random(m) < spec.late_transaction_share
        lag[late] = rng.integers(20, 46, int(late.sum()))
        table = pa.table({
            "txn_id": _running_ids("T", self.txn_seq, m),
            "customer_id": self._customer_ids(cust),
            "txn_date": pa.array(txn_date),
            "posted_date": pa.array(_days_after(txn_date, lag)),
            "amount": pa.array(np.round(amounts[kind, cust], 2)),
            "direction": _decode(_labels(TXN_DIRECTIONS), kind),
            "category": _decode(_labels(TXN_CATEGORIES), kind),
        })
        self.txn_seq += m
        # Duplicated events: the same rows (same txn_id) again at the end; a second chunk, no copy.
        dup = np.flatnonzero(rng.random(m) < spec.duplicate_share)
        return pa.concat_tables([table, table.take(pa.array(dup))])

    def _interactions_table(self, t: int, counts: tuple[np.ndarray, ...], views: np.ndarray) -> pa.Table:
        """Login, call and complaint counts per customer (`counts`, in the order of `EVENT_KINDS`)
        and page views per customer and product (`views`, shape (n, P))."""
        rng = self.rng
        cust_parts, kind_parts, count_parts = [], [], []
        for code, c in enumerate(counts):
            idx = np.flatnonzero(c)
            cust_parts.append(idx)
            kind_parts.append(np.full(len(idx), code, dtype=np.int8))
            count_parts.append(c[idx])
        vc, vp = np.nonzero(views)
        view_code = len(counts)
        cust = np.concatenate([*cust_parts, vc])
        kind = np.concatenate([*kind_parts, np.full(len(vc), view_code, dtype=np.int8)])
        product = np.concatenate([np.full(len(cust) - len(vc), -1), vp])  # products only on page views
        count = np.concatenate([*count_parts, views[vc, vp]]).astype(np.int32)
        day = rng.integers(0, self.dates[t].day, len(cust))
        return pa.table({
            "customer_id": self._customer_ids(cust),
            "event_date": pa.array(_days_after(self.month_start[t], day)),
            "event_type": _decode(_labels(EVENT_KINDS), kind),
            "product_id": _decode(self.product_labels, product),
            "count": pa.array(count),
        })

    def customers_table(self) -> pa.Table:
        last = self.spec.n_months - 1
        held_now = self.held.any(1)
        status = np.where(~self.ever_client, "prospect",
                          np.where(~held_now, "former", np.where(self.engagement < 0.05, "dormant", "active")))
        income = np.round(self.income, 0)
        income = np.where(self.rng.random(self.n) < self.spec.missing_income_share, np.nan, income)
        birth = pd.to_datetime({"year": self.birth_year, "month": self.birth_month,
                                "day": self.rng.integers(1, 29, self.n)})
        joined = self.join_month <= last
        offset = pd.to_timedelta(np.where(joined, self.join_month, 0) * 30.44, "D")
        join = np.where(joined, (self.dates[0] + offset).to_numpy(), np.datetime64("NaT"))
        return pa.table({
            "customer_id": self.ids,
            "birth_date": pa.array(birth.to_numpy()),
            "gender": pa.array(self.gender),
            "region": pa.array(self.region),
            "income": pa.array(income),
            "join_date": pa.array(join.astype("datetime64[ns]")),
            "status": pa.array(status),
            "marketing_opt_out": pa.array(self.opt_out),
            **{f"consent_{c}": pa.array(v) for c, v in self.consent.items()},
        })

    def latent_table(self) -> pa.Table:
        cols = {"customer_id": self.ids, "digital_affinity": pa.array(self.digital.astype(np.float32))}
        for i, need in enumerate(NEEDS):
            cols[f"need_{need}"] = pa.array(self.needs[:, i].astype(np.float32))
        return pa.table(cols)



def simulate(catalogue: Catalogue, spec: BankSpec) -> Iterator[MonthBatch]:
    """Runs the bank month by month.

    Yields one `MonthBatch` per month, then a final batch (month == n_months) holding the
    customer table (`raw/customers`) and latent traits (`truth/latent`) as of the last month.
    """
    bank = _Bank(catalogue, spec)
    for t in range(spec.n_months):
        yield bank.step(t)
    yield MonthBatch(spec.n_months, {"raw/customers": bank.customers_table(), "truth/latent": bank.latent_table()})


def simulate_frames(catalogue: Catalogue, spec: BankSpec) -> dict[str, pd.DataFrame]:
    """Runs the whole simulation in memory and returns one DataFrame per table (small banks, tests)."""
    parts: dict[str, list[pa.Table]] = {}
    for batch in simulate(catalogue, spec):
        for name, table in batch.tables.items():
            parts.setdefault(name, []).append(table)
    return {name: pa.concat_tables(tables).to_pandas() for name, tables in parts.items()}
