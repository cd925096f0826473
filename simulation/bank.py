"""The synthetic bank month by month: activity, money flows, churn, offers, acquisitions and life
events, emitted as one batch of Arrow tables per month so that large banks stream to disk instead
of accumulating in memory.

The customers as the window opens are `nextbest.simulation.population`; the tables are written by
`nextbest.simulation.tables`. Everything is vectorised over customers and products; the only loop
is over months.

The truth kept for every customer-month: the probability of acquiring each product next month
(`truth/acquisition.parquet`), the churn hazard (`truth/churn.parquet`), the latent traits
(`truth/latent.parquet`, the preferred contact hour among them) and the life events
(`truth/life_events.parquet`).

Speed (1,000,000 customers x 18 months written to parquet in about 90 s of CPU and under 2 GB;
benchmarks/bench_generate.py, docs/simulator.md) comes from three habits: customer x product
state is float32 and updated in place; string columns are never built in Python or numpy, only
as integer codes turned into Arrow strings at the end (`nextbest.simulation.columns`); dates
are integer datetime64 arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from nextbest.config import Catalogue
from nextbest.constants import CHANNELS, DEFAULT_SEED
from nextbest.simulation.columns import constant_timestamps, decode, label_array, running_ids, timestamps
from nextbest.simulation.drift import DriftSpec
from nextbest.simulation.params import SPEND_CATEGORIES, TIME_PREFERENCE_WEIGHT
from nextbest.simulation.population import Population, sigmoid, sigmoid_
from nextbest.simulation.response import accept_probability
from nextbest.simulation.tables import (customers_table, holdings_table, interactions_table, latent_table,
                                        transactions_table, truth_tables)

# Named signal settings for `BankSpec` (`nextbest generate --signal`; docs/simulator.md, "Signal").
SIGNALS: dict[str, dict] = {
    "observable": {"need_weight": 6.0, "taste_sd": 0.3, "need_traces": True, "need_noise": 1.0},
    "reference": {"need_weight": 1.0, "taste_sd": 0.5, "need_traces": False, "need_noise": 1.0},
}
ENTRY_PRODUCTS = ("current_account", "e_account")
SALARY_PRODUCTS = ("payroll_account", "salary_project")
LIFE_EVENTS = ("salary_rise", "large_deposit", "new_loan", "birthday")
RESPONSES = ("accept", "reject", "no_response")
_DAY = np.timedelta64(1, "D")


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
    # How much of intent the bank can observe (docs/simulator.md, "Signal"): the scale of the needs'
    # loadings, the sd of the unobserved taste, whether needs leave traces in money flows, and the
    # sd (logit) of the part of each need that demographics do not explain. The defaults are the
    # observable bank, whose data carries most of the intent; `SIGNALS["reference"]` is the earlier
    # bank, where an unobserved taste dominates and personalisation barely beats popularity. The
    # calibration keeps any setting's marginals beside the reference's.
    need_weight: float = 6.0
    taste_sd: float = 0.3
    need_traces: bool = True
    need_noise: float = 1.0
    # Logit amplitude of each customer's preferred contact hour in the offer-response truth
    # (docs/simulator.md, "Time preference"); it also gives the logins their times of day. 0: no
    # time preference (no preferred hours, every event dated at midnight).
    time_preference: float = TIME_PREFERENCE_WEIGHT

    def month_ends(self) -> pd.DatetimeIndex:
        return pd.date_range(end=pd.Timestamp(self.end), periods=self.n_months, freq="ME")


@dataclass
class MonthBatch:
    """Rows produced for one month, keyed by output table name (`raw/...` or `truth/...`)."""

    month: int
    tables: dict[str, pa.Table]


class _Bank(Population):
    """Mutable state of the simulation; one instance per `simulate` call. `step` moves it one month."""

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
        p_acq = sigmoid_(intent.copy())
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
        view_rate = sigmoid_(intent)  # reuses intent's memory: shape (n, P)
        view_rate *= (3.0 * (self.digital * 0.8 + 0.2) * (active | (known & ~is_client))).astype(np.float32)[:, None]
        if drift is not None:
            drift.views(self, t, view_rate)
        views = rng.poisson(view_rate)
        del intent, view_rate
        complaints = rng.poisson((0.01 + 0.6 * self.dissat) * active)
        calls = rng.poisson((0.08 + 0.5 * self.dissat) * active * rate.get("call", 1.0))

        monthly_income = self.income / 12 * rng.normal(1, 0.03, n)
        has_salary = self.held[:, self.cols(SALARY_PRODUCTS)].any(1)
        salary = np.where(has_salary & active, monthly_income, 0.0)
        needs, traces = self.needs, self.spec.need_traces
        # Without a salary here, a regular income paid in from elsewhere, likelier and larger for
        # those who need an account for it.
        p_other, other_share = ((0.1 + 0.9 * needs[:, 1], 0.2 + 0.6 * needs[:, 1]) if traces else (0.7, 0.6))
        other_in = np.where(~has_salary & active & (rng.random(n) < p_other), monthly_income * other_share, 0.0)
        shares = np.array([0.22, 0.12, 0.08, 0.07, 0.12])
        spend = (monthly_income[:, None] * shares * self._spend_mix() * eng[:, None]
                 * rng.lognormal(0, 0.15 if traces else 0.25, (n, len(SPEND_CATEGORIES))))
        if spend_factor is not None:
            spend *= spend_factor
        outflow_mood = np.clip(0.05 + 0.6 * (1 - self.engagement) + 0.4 * self.dissat, 0, 1.5)
        transfer_out = np.where(active, monthly_income * outflow_mood * rng.lognormal(0, 0.3, n), 0.0)
        inflow = salary + other_in
        outflow = spend.sum(1) + transfer_out
        if traces:  # savers keep a cushion of months of income on their accounts, spenders run theirs down
            cushion = monthly_income * (0.3 + 5.0 * needs[:, 0])
            self.balance = np.maximum(0.0, 0.7 * self.balance + 0.3 * cushion + 0.5 * (inflow - outflow))
        else:
            self.balance = np.maximum(0.0, self.balance + inflow - outflow)
        outflow_ratio = np.clip(outflow / (inflow + 50.0), 0, 5)

        # Churn hazard: complaints, falling engagement and outflows raise it; product load lowers it.
        self.complaints_hist = self.complaints_hist[1:] + [complaints]
        complaints_3m = np.sum(self.complaints_hist, axis=0)
        eng_drop = np.clip(self.eng_hist[0] - self.engagement, 0, 1)
        n_products = self.held.sum(1)
        churn_logit = (-7.0 + 0.9 * complaints_3m + 4.0 * eng_drop + 0.9 * np.minimum(outflow_ratio, 3)
                       - 0.3 * n_products + 2.0 * self.dissat)
        p_churn = np.where(is_client, sigmoid(churn_logit), 0.0)

        tables: dict[str, pa.Table] = {}
        offers, forced, declined = self._offers(t, is_client, eligible, p_acq)
        tables["raw/holdings"] = holdings_table(self, t)
        tables["raw/transactions"] = transactions_table(
            self, t, np.stack([salary, other_in, *spend.T, transfer_out]))
        tables["raw/interactions"] = interactions_table(
            self, t, (logins_app, logins_web, calls, complaints), views)
        del views
        if offers is not None:
            tables["raw/offers"] = offers
        rows = np.flatnonzero(known | self.ever_client)
        # The churn label's event, holding nothing next month: churning, or else every held product
        # closing with nothing acquired (offers already in p_acq). Drops for unmet requirements are left out.
        p_gone = np.where(is_client, p_churn + (1 - p_churn) * self._p_empty(p_acq), 0.0)
        tables["truth/acquisition"], tables["truth/churn"] = truth_tables(self, t, rows, p_acq, p_churn, p_gone)

        # Transition to next month.
        acquire = rng.random(p_acq.shape, dtype=np.float32) < p_acq
        if declined is not None:  # a declined offer's pair: the answer's uniform decides, against p0
            i, j, v, p0 = declined
            acquire[i, j] = v < p0
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
        self.held = self.respect_requirements(new_held)
        tables["truth/life_events"] = self._life_events(t, took_loan)

        self.boost *= 0.7
        incident = rng.random(n) < 0.015
        self.dissat = np.clip(self.dissat * 0.85 + incident * 0.5, 0, 1)
        drift = rng.normal(0, 0.05, n) + 0.03 * (0.7 - self.engagement) - 0.25 * incident
        self.eng_hist = self.eng_hist[1:] + [self.engagement.copy()]
        self.engagement = np.where(self.silent, 0.0, np.clip(self.engagement + drift, 0, 1))
        if self.spec.need_traces:  # savers put part of each month's income aside
            self.deposit_balance += monthly_income * 0.08 * self.needs[:, 0] * active
        else:
            self.deposit_balance *= 1.002
        return MonthBatch(t, tables)

    def _spend_mix(self) -> np.ndarray:
        """Per customer and spending category (`SPEND_CATEGORIES`), the factor on the income's
        share of that category, (n, 5). With the needs' traces, everyday spending (groceries,
        utilities) follows the everyday need, and discretionary spending (travel, entertainment,
        shopping) the credit need, less for savers and preservers; each factor averages about what
        it does without them."""
        needs = self.needs
        if not self.spec.need_traces:
            return 0.5 + needs[:, 4:5]
        everyday = 0.1 + 1.55 * needs[:, 4:5]
        discretionary = 0.4 + 2.15 * needs[:, 3:4]
        discretionary *= (1.5 - needs[:, 0:1]) * (1.25 - 0.65 * needs[:, 2:3])
        return np.concatenate([everyday, everyday, discretionary, discretionary, discretionary], axis=1)

    def _offers(self, t: int, is_client: np.ndarray, eligible: np.ndarray,
                p_acq: np.ndarray) -> tuple[pa.Table | None, np.ndarray, tuple | None]:
        """Offers from past campaigns, answered by the offer-response truth.

        An offered product's answer and its unprompted acquisition that month share one uniform
        v: accept iff v < a, acquire unprompted iff v < p0. So an offer never stops an acquisition
        that would have happened, P(acquire | offer) = max(a, p0), and only an acceptance with
        p0 <= v is incremental: the offer's uplift is max(a - p0, 0)
        (`monitoring.replay.world.Truth.uplift_grid`).

        Updates `p_acq` in place so the truth accounts for the answer (1 after an acceptance, else
        P(v < p0 | v >= a) = max(p0 - a, 0) / (1 - a)), and returns the offers table, the
        (customer, product) pairs acquired by accepting, and the declined pairs (rows, products,
        their v and their hazard before the answer, p0), which the month's draw for them uses.
        """
        rng, n = self.rng, self.n
        date = self.dates[t]
        forced = np.zeros((n, self.P), dtype=bool)
        offered = is_client & ~self.opt_out & (rng.random(n) < self.spec.offer_share)
        off_idx = np.flatnonzero(offered)
        if not len(off_idx):
            return None, forced, None
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
                                      self.categories[prod], self.preferred_hour[off_idx], self.spec.time_preference)
        v = rng.random(k)
        accepted = v < p_accept
        responded = accepted | (rng.random(k) < 0.45)
        response = np.where(accepted, 0, np.where(responded, 1, 2))
        forced[off_idx[accepted], prod[accepted]] = True
        # The answer is known by the month end: an accepted offer is acquired next month for sure;
        # after any other answer, only an unprompted acquisition the offer would not have caught.
        declined = ~accepted
        rows, cols = off_idx[declined], prod[declined]
        p0 = p_acq[rows, cols].copy()
        a = p_accept[declined]
        p_acq[rows, cols] = np.maximum(p0 - a, 0.0) / np.maximum(1.0 - a, 1e-9)
        p_acq[off_idx[accepted], prod[accepted]] = 1.0
        table = pa.table({
            "offer_id": running_ids("O", self.offer_seq, k, width=9),
            "customer_id": self.customer_ids(off_idx),
            "product_id": decode(self.product_labels, prod),
            "channel": decode(label_array(CHANNELS), channel_code),
            "offered_at": timestamps(offered_at),
            "response": decode(label_array(RESPONSES), response),
        })
        self.offer_seq += k
        return table, forced, (rows, cols, v[declined], p0)

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

    def _life_events(self, t: int, took_loan: np.ndarray) -> pa.Table:
        rng, n = self.rng, self.n
        date = self.dates[t]
        rise = self.held.any(1) & (rng.random(n) < 0.01)
        self.income = np.where(rise, self.income * 1.15, self.income)
        self._boost(rise, ("savings_account", "term_deposit", "investment_funds", "brokerage"), 1.4)
        # A higher income also makes a bigger purchase affordable.
        self._boost(rise, ("mortgage", "car_loan"), 1.0)
        deposit_rate = 0.001 + 0.0135 * self.needs[:, 2] if self.spec.need_traces else 0.006
        deposit = self.held.any(1) & (rng.random(n) < deposit_rate)
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
            "customer_id": self.customer_ids(idx),
            "month_start": constant_timestamps(next_month, len(idx)),
            "event": decode(label_array(LIFE_EVENTS), kind),
        })

    def _boost(self, mask: np.ndarray, products: tuple[str, ...], amount: float) -> None:
        cols = self.cols(products)
        if cols and mask.any():
            self.boost[np.ix_(mask, cols)] += amount




def simulate(catalogue: Catalogue, spec: BankSpec) -> Iterator[MonthBatch]:
    """Runs the bank month by month.

    Yields one `MonthBatch` per month, then a final batch (month == n_months) holding the
    customer table (`raw/customers`) and latent traits (`truth/latent`) as of the last month.
    """
    bank = _Bank(catalogue, spec)
    for t in range(spec.n_months):
        yield bank.step(t)
    yield MonthBatch(spec.n_months, {"raw/customers": customers_table(bank), "truth/latent": latent_table(bank)})


def simulate_frames(catalogue: Catalogue, spec: BankSpec) -> dict[str, pd.DataFrame]:
    """Runs the whole simulation in memory and returns one DataFrame per table (small banks, tests)."""
    parts: dict[str, list[pa.Table]] = {}
    for batch in simulate(catalogue, spec):
        for name, table in batch.tables.items():
            parts.setdefault(name, []).append(table)
    return {name: pa.concat_tables(tables).to_pandas() for name, tables in parts.items()}
