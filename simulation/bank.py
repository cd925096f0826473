"""The synthetic bank: customers, monthly holdings, transactions, interactions, offers, truth.

Everything is vectorised over customers and products; the only loop is over months, and each
month is emitted as a batch of Arrow tables so that large banks stream to disk instead of
accumulating in memory.

The truth kept for every customer-month: the probability of acquiring each product next month
(`truth/acquisition.parquet`), the churn hazard (`truth/churn.parquet`), the latent traits
(`truth/latent.parquet`) and the life events (`truth/life_events.parquet`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from nextbest.config import Catalogue
from nextbest.constants import CHANNELS, DEFAULT_SEED
from simulation.params import NEEDS, PRODUCT_BEHAVIOUR, SPEND_CATEGORIES
from simulation.response import accept_probability

REGIONS = ("north", "south", "east", "west", "capital", "islands")
LOAN_PRODUCTS = ("consumer_loan", "car_loan", "mortgage")
ENTRY_PRODUCTS = ("current_account", "e_account")


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

    def month_ends(self) -> pd.DatetimeIndex:
        return pd.date_range(end=pd.Timestamp(self.end), periods=self.n_months, freq="ME")


@dataclass
class MonthBatch:
    """Rows produced for one month, keyed by output table name (`raw/...` or `truth/...`)."""

    month: int
    tables: dict[str, pa.Table]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class _Bank:
    """Mutable state of the simulation; one instance per `simulate` call."""

    def __init__(self, catalogue: Catalogue, spec: BankSpec):
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        self.products = catalogue.ids
        unknown = [p for p in self.products if p not in PRODUCT_BEHAVIOUR]
        if unknown:
            raise ValueError(f"configs/products.yaml: no simulator behaviour for product_id {unknown}")
        self.pidx = {p: i for i, p in enumerate(self.products)}
        self.dates = spec.month_ends()
        n, n_prod, rng = spec.n_customers, len(self.products), self.rng
        self.n, self.P = n, n_prod

        width = max(7, len(str(n)))
        self.ids = pa.array([f"C{i:0{width}d}" for i in range(1, n + 1)], pa.string())

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
        needs = np.empty((n, len(NEEDS)))
        needs[:, 0] = _sigmoid(0.9 * income_z + rng.normal(0, 1, n))  # saving
        needs[:, 1] = _sigmoid(2.0 * (age0 < 66) - 1.0 + 0.5 * income_z + rng.normal(0, 1, n))  # income
        needs[:, 2] = _sigmoid((age0 - 52) / 9 + 0.5 * income_z + rng.normal(0, 1, n))  # preservation
        needs[:, 3] = _sigmoid(-(age0 - 36) / 11 + 0.3 * income_z + rng.normal(0, 1, n))  # credit
        needs[:, 4] = rng.beta(5, 2, n)  # everyday
        self.needs = needs

        weights = np.zeros((len(NEEDS), n_prod))
        self.base = np.zeros(n_prod)
        init_logit = np.zeros(n_prod)
        self.close_rate = np.zeros(n_prod)
        for p, (base, init, loadings, close) in PRODUCT_BEHAVIOUR.items():
            if p not in self.pidx:
                continue
            j = self.pidx[p]
            self.base[j], init_logit[j], self.close_rate[j] = base, init, close
            for need, w in loadings.items():
                weights[NEEDS.index(need), j] = w
        self.weights = weights
        # Unobserved taste per customer and product: the part no feature can fully recover.
        self.taste = rng.normal(0, 0.5, (n, n_prod))

        self.min_age = np.array([catalogue.by_id()[p].eligibility.min_age for p in self.products])
        self.max_age = np.array([catalogue.by_id()[p].eligibility.max_age for p in self.products])
        self.requires = [[self.pidx[r] for r in catalogue.by_id()[p].eligibility.requires] for p in self.products]
        self.loan_cols = [self.pidx[p] for p in LOAN_PRODUCTS if p in self.pidx]

        # Lifecycle at the start of the window.
        u = rng.random(n)
        self.is_prospect = u < spec.prospect_share
        former = (u >= spec.prospect_share) & (u < spec.prospect_share + spec.former_share)
        self.silent = rng.random(n) < spec.silent_share
        tenure_months = rng.integers(1, 240, n)
        self.join_month = np.where(self.is_prospect, 10_000, -tenure_months)  # month index of joining

        # Initial holdings: needs-driven, with the entry account first and prerequisites respected.
        z0 = init_logit + needs @ weights * 1.2 + self.taste
        held = rng.random((n, n_prod)) < _sigmoid(z0 - needs.mean(1, keepdims=True) @ weights.sum(0, keepdims=True) * 0.6)
        self.held = self._respect_requirements(held)
        none_held = ~self.held.any(1) & ~self.is_prospect & ~former
        self.held[none_held, self.pidx.get("current_account", 0)] = True
        self.held[self.is_prospect | former] = False
        self._age_mask(age0)
        self.ever_client = ~self.is_prospect

        self.boost = np.zeros((n, n_prod))
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

    def step(self, t: int) -> MonthBatch:
        rng, n, spec = self.rng, self.n, self.spec
        date = self.dates[t]
        is_client = self.held.any(1)
        joined = self.join_month <= t
        known = joined | (self.is_prospect & (rng.random(n) < 0.35))  # prospects seen on web/branch
        former = self.ever_client & ~is_client

        # Intent for next month: needs, taste, life-event boosts, tenure and loan history.
        tenure = t - self.join_month
        intent = self.base + self.needs @ self.weights + self.taste + self.boost
        intent += np.where(tenure < 6, 0.6, 0.0)[:, None]
        recent_loan = self.months_since_loan < 6
        intent[np.ix_(recent_loan, self.loan_cols)] -= 2.5
        p_acq = _sigmoid(intent) * self.eligible(t) * ~self.held * is_client[:, None]

        # Prospects join, former clients come back, both through an entry product.
        p_join = np.where(self.is_prospect & ~joined, 0.05, 0.0) + np.where(former, 0.01, 0.0)
        for name, share in (("current_account", 0.75), ("e_account", 0.25)):
            if name in self.pidx:
                p_acq[:, self.pidx[name]] = np.where(is_client, p_acq[:, self.pidx[name]], p_join * share)

        # Activity this month.
        active = is_client & ~self.silent
        eng = self.engagement * active
        logins_app = rng.poisson(18 * self.digital * eng)
        logins_web = rng.poisson(6 * (1.1 - self.digital) * eng + 0.8 * (self.is_prospect & known))
        views = rng.poisson(3.0 * (self.digital * 0.8 + 0.2)[:, None] * _sigmoid(intent + 3.2)
                            * ((active | (known & ~is_client))[:, None]))
        complaints = rng.poisson((0.01 + 0.6 * self.dissat) * active)
        calls = rng.poisson((0.08 + 0.5 * self.dissat) * active)

        monthly_income = self.income / 12 * rng.normal(1, 0.03, n)
        has_salary = self.held[:, [self.pidx[p] for p in ("payroll_account", "salary_project") if p in self.pidx]].any(1)
        salary = np.where(has_salary & active, monthly_income, 0.0)
        other_in = np.where(~has_salary & active & (rng.random(n) < 0.7), monthly_income * 0.6, 0.0)
        shares = np.array([0.22, 0.12, 0.08, 0.07, 0.12])
        spend = (monthly_income[:, None] * shares * (0.5 + self.needs[:, 4:5]) * eng[:, None]
                 * rng.lognormal(0, 0.25, (n, len(SPEND_CATEGORIES))))
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

        # Offers from past campaigns, answered by the offer-response truth.
        offered = is_client & ~self.opt_out & (rng.random(n) < spec.offer_share)
        off_idx = np.flatnonzero(offered)
        offer_rows = None
        forced = np.zeros_like(self.held)
        if len(off_idx):
            cand = (~self.held[off_idx]) & self.eligible(t)[off_idx]
            weights = cand * rng.random(cand.shape)
            prod = weights.argmax(1)
            has_cand = cand.any(1)
            off_idx, prod = off_idx[has_cand], prod[has_cand]
            channel = rng.choice(np.array(CHANNELS), len(off_idx))
            day = rng.integers(1, date.day + 1, len(off_idx))
            hour = rng.integers(8, 22, len(off_idx))
            offered_at = (pd.Timestamp(date.year, date.month, 1) + pd.to_timedelta(day - 1, "D")
                          + pd.to_timedelta(hour, "h") + pd.to_timedelta(rng.integers(0, 60, len(off_idx)), "m"))
            p_accept = accept_probability(p_acq[off_idx, prod], channel, hour,
                                          offered_at.weekday.to_numpy(), self.digital[off_idx])
            accepted = rng.random(len(off_idx)) < p_accept
            responded = accepted | (rng.random(len(off_idx)) < 0.45)
            response = np.where(accepted, "accept", np.where(responded, "reject", "no_response"))
            forced[off_idx[accepted], prod[accepted]] = True
            # The truth accounts for the offer: P(acquire) = 1 - (1 - unprompted)(1 - accept).
            p_acq[off_idx, prod] = 1 - (1 - p_acq[off_idx, prod]) * (1 - p_accept)
            ids = np.arange(self.offer_seq, self.offer_seq + len(off_idx))
            self.offer_seq += len(off_idx)
            offer_rows = pa.table({
                "offer_id": pa.array([f"O{i:09d}" for i in ids]),
                "customer_id": self.ids.take(pa.array(off_idx)),
                "product_id": pa.array(np.array(self.products)[prod]),
                "channel": pa.array(channel),
                "offered_at": pa.array(offered_at.to_numpy()),
                "response": pa.array(response),
            })

        tables: dict[str, pa.Table] = {}
        tables["raw/holdings"] = self._holdings_table(t)
        tables["raw/transactions"] = self._transactions_table(t, salary, other_in, spend, transfer_out)
        tables["raw/interactions"] = self._interactions_table(t, logins_app, logins_web, views, calls, complaints)
        if offer_rows is not None:
            tables["raw/offers"] = offer_rows
        rows = np.flatnonzero(known | self.ever_client)
        truth = {"customer_id": self.ids.take(pa.array(rows)),
                 "snapshot_date": pa.array(np.full(len(rows), date.to_datetime64()))}
        for j, p in enumerate(self.products):
            truth[p] = pa.array(p_acq[rows, j].astype(np.float32))
        tables["truth/acquisition"] = pa.table(truth)
        tables["truth/churn"] = pa.table({
            "customer_id": self.ids.take(pa.array(rows)),
            "snapshot_date": pa.array(np.full(len(rows), date.to_datetime64())),
            "p_churn": pa.array(p_churn[rows].astype(np.float32)),
        })

        # Transition to next month.
        acquire = (rng.random(p_acq.shape) < p_acq) | forced
        close = self.held & (rng.random(self.held.shape) < self.close_rate * (1 + 3 * self.dissat[:, None]))
        churn = rng.random(n) < p_churn
        new_held = (self.held & ~close) | acquire
        new_held[churn] = False
        newly_joined = ~is_client & new_held.any(1)
        self.join_month = np.where(newly_joined & self.is_prospect & ~joined, t + 1, self.join_month)
        self.ever_client |= new_held.any(1)
        took_loan = (acquire[:, self.loan_cols].any(1)) if self.loan_cols else np.zeros(n, bool)
        self.months_since_loan = np.where(took_loan, 0, self.months_since_loan + 1)
        self.held = self._respect_requirements(new_held)
        events = self._life_events(t, took_loan)
        tables["truth/life_events"] = events

        self.boost *= 0.7
        incident = rng.random(n) < 0.015
        self.dissat = np.clip(self.dissat * 0.85 + incident * 0.5, 0, 1)
        drift = rng.normal(0, 0.05, n) + 0.03 * (0.7 - self.engagement) - 0.25 * incident
        self.eng_hist = self.eng_hist[1:] + [self.engagement.copy()]
        self.engagement = np.where(self.silent, 0.0, np.clip(self.engagement + drift, 0, 1))
        self.deposit_balance *= 1.002
        return MonthBatch(t, tables)

    def _life_events(self, t: int, took_loan: np.ndarray) -> pa.Table:
        rng, n = self.rng, self.n
        date = self.dates[t]
        events: list[tuple[np.ndarray, str]] = []
        rise = self.held.any(1) & (rng.random(n) < 0.01)
        self.income = np.where(rise, self.income * 1.15, self.income)
        self._boost(rise, ("savings_account", "term_deposit", "investment_funds", "brokerage"), 1.4)
        events.append((rise, "salary_rise"))
        deposit = self.held.any(1) & (rng.random(n) < 0.006)
        self.balance = np.where(deposit, self.balance + self.income * 0.5, self.balance)
        self._boost(deposit, ("term_deposit", "investment_funds", "premium_package"), 2.0)
        events.append((deposit, "large_deposit"))
        self._boost(took_loan, ("life_insurance", "home_insurance"), 1.3)
        events.append((took_loan, "new_loan"))
        birthday = self.birth_month == ((date.month % 12) + 1)
        turning = birthday & np.isin(self.age_at(t) + 1, (30, 40, 50, 55))
        self._boost(turning, ("pension_plan", "life_insurance"), 1.0)
        events.append((birthday, "birthday"))
        idx = np.concatenate([np.flatnonzero(m) for m, _ in events])
        kind = np.concatenate([np.full(int(m.sum()), k) for m, k in events])
        return pa.table({
            "customer_id": self.ids.take(pa.array(idx, pa.int64())),
            "month_start": pa.array(np.full(len(idx), (date + pd.Timedelta(days=1)).to_datetime64())),
            "event": pa.array(kind, pa.string()),
        })

    def _boost(self, mask: np.ndarray, products: tuple[str, ...], amount: float) -> None:
        cols = [self.pidx[p] for p in products if p in self.pidx]
        if cols and mask.any():
            self.boost[np.ix_(mask, cols)] += amount

    def _holdings_table(self, t: int) -> pa.Table:
        cust, prod = np.nonzero(self.held)
        balance = np.zeros(len(cust))
        names = np.array(self.products)[prod]
        is_account = np.isin(names, ("current_account", "e_account", "payroll_account"))
        is_saving = np.isin(names, ("savings_account", "term_deposit", "investment_funds", "brokerage", "pension_plan"))
        is_loan = np.isin(names, LOAN_PRODUCTS)
        n_acc = np.bincount(cust[is_account], minlength=self.n).clip(1)
        n_sav = np.bincount(cust[is_saving], minlength=self.n).clip(1)
        balance[is_account] = self.balance[cust[is_account]] / n_acc[cust[is_account]]
        balance[is_saving] = self.deposit_balance[cust[is_saving]] / n_sav[cust[is_saving]]
        balance[is_loan] = -self.income[cust[is_loan]] * 0.8
        return pa.table({
            "customer_id": self.ids.take(pa.array(cust, pa.int64())),
            "snapshot_date": pa.array(np.full(len(cust), self.dates[t].to_datetime64())),
            "product_id": pa.array(names, pa.string()),
            "balance": pa.array(np.round(balance, 2)),
        })

    def _transactions_table(self, t, salary, other_in, spend, transfer_out) -> pa.Table:
        rng, spec = self.rng, self.spec
        date = self.dates[t]
        month_start = pd.Timestamp(date.year, date.month, 1)
        cols = [("salary", "in", salary), ("transfer_in", "in", other_in)]
        cols += [(c, "out", spend[:, i]) for i, c in enumerate(SPEND_CATEGORIES)]
        cols += [("transfer_out", "out", transfer_out)]
        cust_parts, cat_parts, dir_parts, amt_parts = [], [], [], []
        for cat, direction, amount in cols:
            idx = np.flatnonzero(amount > 0.5)
            cust_parts.append(idx)
            cat_parts.append(np.full(len(idx), cat))
            dir_parts.append(np.full(len(idx), direction))
            amt_parts.append(np.round(amount[idx], 2))
        cust = np.concatenate(cust_parts)
        day = rng.integers(0, date.day, len(cust))
        txn_date = month_start.to_datetime64() + day.astype("timedelta64[D]")
        lag = np.where(rng.random(len(cust)) < spec.late_transaction_share, rng.integers(20, 46, len(cust)), rng.integers(0, 3, len(cust)))
        posted = txn_date + lag.astype("timedelta64[D]")
        ids = np.arange(self.txn_seq, self.txn_seq + len(cust))
        self.txn_seq += len(cust)
        dup = np.flatnonzero(rng.random(len(cust)) < spec.duplicate_share)
        order = np.concatenate([np.arange(len(cust)), dup])  # duplicated events: same txn_id twice
        amount = np.concatenate(amt_parts)
        return pa.table({
            "txn_id": pa.array(np.char.add("T", ids.astype(str))[order]),
            "customer_id": self.ids.take(pa.array(cust[order], pa.int64())),
            "txn_date": pa.array(txn_date[order]),
            "posted_date": pa.array(posted[order]),
            "amount": pa.array(amount[order]),
            "direction": pa.array(np.concatenate(dir_parts)[order]),
            "category": pa.array(np.concatenate(cat_parts)[order]),
        })

    def _interactions_table(self, t, logins_app, logins_web, views, calls, complaints) -> pa.Table:
        rng = self.rng
        date = self.dates[t]
        month_start = pd.Timestamp(date.year, date.month, 1).to_datetime64()
        parts = []
        for kind, counts in (("login_app", logins_app), ("login_web", logins_web), ("call", calls),
                             ("complaint", complaints)):
            idx = np.flatnonzero(counts)
            parts.append((idx, np.full(len(idx), kind), np.full(len(idx), None, dtype=object), counts[idx]))
        vc, vp = np.nonzero(views)
        parts.append((vc, np.full(len(vc), "page_view"), np.array(self.products, dtype=object)[vp], views[vc, vp]))
        cust = np.concatenate([p[0] for p in parts])
        day = rng.integers(0, date.day, len(cust))
        return pa.table({
            "customer_id": self.ids.take(pa.array(cust, pa.int64())),
            "event_date": pa.array(month_start + day.astype("timedelta64[D]")),
            "event_type": pa.array(np.concatenate([p[1] for p in parts]), pa.string()),
            "product_id": pa.array(np.concatenate([p[2] for p in parts]), pa.string()),
            "count": pa.array(np.concatenate([p[3] for p in parts]).astype(np.int32)),
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
