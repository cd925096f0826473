"""The simulated bank's tables, written from its state as Arrow tables: each month's holdings,
transactions, interactions and truth, and at the end the customers and their latent traits.

Customer ids are a byte gather of fixed-width ids and every other string column is decoded from
integer codes (`nextbest.simulation.columns`), so no string is built per row in Python.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from nextbest.simulation.columns import constant_timestamps, days_after, decode, label_array, running_ids
from nextbest.simulation.params import (LOGIN_HOUR_PROFILE, LOGIN_HOUR_SD, LOGIN_NEAR_PREFERENCE, NEEDS,
                                        SPEND_CATEGORIES)
from nextbest.simulation.population import Population

# Transaction kinds in the order they are emitted, with their direction.
TXN_CATEGORIES = ("salary", "transfer_in", *SPEND_CATEGORIES, "transfer_out")
TXN_DIRECTIONS = ("in", "in", *("out",) * len(SPEND_CATEGORIES), "out")
# Interaction kinds in the order `interactions_table` receives their counts, page views last.
EVENT_KINDS = ("login_app", "login_web", "call", "complaint", "page_view")
LOGIN_KINDS = (EVENT_KINDS.index("login_app"), EVENT_KINDS.index("login_web"))
_US_PER_S = np.int64(1_000_000)


def holdings_table(bank: Population, t: int) -> pa.Table:
    cust, prod = np.nonzero(bank.held)
    balance = np.zeros(len(cust))
    # Balances by catalogue category, so that a bank's own products carry them too.
    is_account = (bank.categories == "account")[prod]
    is_saving = np.isin(bank.categories, ("deposit", "investment"))[prod]
    is_loan = (bank.categories == "loan")[prod]
    n_acc = np.bincount(cust[is_account], minlength=bank.n).clip(1)
    n_sav = np.bincount(cust[is_saving], minlength=bank.n).clip(1)
    balance[is_account] = bank.balance[cust[is_account]] / n_acc[cust[is_account]]
    balance[is_saving] = bank.deposit_balance[cust[is_saving]] / n_sav[cust[is_saving]]
    balance[is_loan] = -bank.income[cust[is_loan]] * 0.8
    return pa.table({
        "customer_id": bank.customer_ids(cust),
        "snapshot_date": constant_timestamps(bank.dates.values[t], len(cust)),
        "product_id": decode(bank.product_labels, prod),
        "balance": pa.array(np.round(balance, 2)),
    })


def transactions_table(bank: Population, t: int, amounts: np.ndarray) -> pa.Table:
    """One row per customer and transaction kind with an amount; `amounts` is (kinds, n).
    Advances `bank.txn_seq` past the ids it gives out."""
    rng, spec = bank.rng, bank.spec
    kind, cust = np.nonzero(amounts > 0.5)  # kind-major, as TXN_CATEGORIES
    m = len(cust)
    txn_date = days_after(bank.month_start[t], rng.integers(0, bank.dates[t].day, m))
    lag = rng.integers(0, 3, m)
    late = rng.random(m) < spec.late_transaction_share
    lag[late] = rng.integers(20, 46, int(late.sum()))
    table = pa.table({
        "txn_id": running_ids("T", bank.txn_seq, m),
        "customer_id": bank.customer_ids(cust),
        "txn_date": pa.array(txn_date),
        "posted_date": pa.array(days_after(txn_date, lag)),
        "amount": pa.array(np.round(amounts[kind, cust], 2)),
        "direction": decode(label_array(TXN_DIRECTIONS), kind),
        "category": decode(label_array(TXN_CATEGORIES), kind),
    })
    bank.txn_seq += m
    # Duplicated events: the same rows (same txn_id) again at the end; a second chunk, no copy.
    dup = np.flatnonzero(rng.random(m) < spec.duplicate_share)
    return pa.concat_tables([table, table.take(pa.array(dup))])


def interactions_table(bank: Population, t: int, counts: tuple[np.ndarray, ...], views: np.ndarray) -> pa.Table:
    """Login, call and complaint counts per customer (`counts`, in the order of `EVENT_KINDS`)
    and page views per customer and product (`views`, shape (n, P)).

    With a time preference (`BankSpec.time_preference`), logins carry a time of day
    (`login_times`); every other event is dated at midnight, its day only."""
    rng = bank.rng
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
    day = rng.integers(0, bank.dates[t].day, len(cust))
    when = days_after(bank.month_start[t], day)
    if bank.spec.time_preference:
        when += login_times(bank, cust, kind)
    return pa.table({
        "customer_id": bank.customer_ids(cust),
        "event_date": pa.array(when),
        "event_type": decode(label_array(EVENT_KINDS), kind),
        "product_id": decode(bank.product_labels, product),
        "count": pa.array(count),
    })


def login_times(bank: Population, cust: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """Time of day, in microseconds after midnight, of each interaction row (customer `cust`, kind
    code `kind`): for logins, the customer's preferred hour plus noise with probability
    LOGIN_NEAR_PREFERENCE, else an hour of the bank-wide LOGIN_HOUR_PROFILE, to the second; 0 for
    the other kinds. Drawn from `bank.time_rng`, so the main stream is untouched."""
    rng = bank.time_rng
    login = np.flatnonzero(np.isin(kind, LOGIN_KINDS))
    m = len(login)
    near = rng.random(m) < LOGIN_NEAR_PREFERENCE
    profile = np.asarray(LOGIN_HOUR_PROFILE) / sum(LOGIN_HOUR_PROFILE)
    generic = rng.choice(24, m, p=profile) + rng.random(m)
    hour = np.where(near, bank.preferred_hour[cust[login]] + rng.normal(0, LOGIN_HOUR_SD, m), generic) % 24
    out = np.zeros(len(cust), dtype=np.int64)
    out[login] = np.minimum(np.floor(hour * 3600), 86_399).astype(np.int64) * _US_PER_S
    return out


def truth_tables(bank: Population, t: int, rows: np.ndarray, p_acq: np.ndarray,
                 p_churn: np.ndarray, p_gone: np.ndarray) -> tuple[pa.Table, pa.Table]:
    """`truth/acquisition` (next month's acquisition probability per product) and `truth/churn`
    for the customers at `rows`."""
    ids = bank.customer_ids(rows)
    snapshot = constant_timestamps(bank.dates.values[t], len(rows))
    by_product = np.ascontiguousarray(p_acq[rows].T)  # (P, rows): one contiguous column each
    acquisition = pa.table({"customer_id": ids, "snapshot_date": snapshot,
                            **{p: pa.array(by_product[j]) for j, p in enumerate(bank.products)}})
    churn = pa.table({"customer_id": ids, "snapshot_date": snapshot,
                      "p_churn": pa.array(p_churn[rows].astype(np.float32)),
                      "p_gone": pa.array(p_gone[rows].astype(np.float32))})
    return acquisition, churn


def customers_table(bank: Population) -> pa.Table:
    """`raw/customers` as of the last month."""
    last = bank.spec.n_months - 1
    held_now = bank.held.any(1)
    status = np.where(~bank.ever_client, "prospect",
                      np.where(~held_now, "former", np.where(bank.engagement < 0.05, "dormant", "active")))
    income = np.round(bank.income, 0)
    income = np.where(bank.rng.random(bank.n) < bank.spec.missing_income_share, np.nan, income)
    birth = pd.to_datetime({"year": bank.birth_year, "month": bank.birth_month,
                            "day": bank.rng.integers(1, 29, bank.n)})
    joined = bank.join_month <= last
    offset = pd.to_timedelta(np.where(joined, bank.join_month, 0) * 30.44, "D")
    join = np.where(joined, (bank.dates[0] + offset).to_numpy(), np.datetime64("NaT"))
    return pa.table({
        "customer_id": bank.ids,
        "birth_date": pa.array(birth.to_numpy()),
        "gender": pa.array(bank.gender),
        "region": pa.array(bank.region),
        "income": pa.array(income),
        "join_date": pa.array(join.astype("datetime64[ns]")),
        "status": pa.array(status),
        "marketing_opt_out": pa.array(bank.opt_out),
        **{f"consent_{c}": pa.array(v) for c, v in bank.consent.items()},
    })


def latent_table(bank: Population) -> pa.Table:
    """`truth/latent`: digital affinity, needs and, with a time preference, the preferred contact hour
    per customer. The time preference's weight is in the table's metadata (`time_preference`), for
    the replay's truth to answer offers as the bank did."""
    cols = {"customer_id": bank.ids, "digital_affinity": pa.array(bank.digital.astype(np.float32))}
    for i, need in enumerate(NEEDS):
        cols[f"need_{need}"] = pa.array(bank.needs[:, i].astype(np.float32))
    if not bank.spec.time_preference:
        return pa.table(cols)
    cols["preferred_hour"] = pa.array(bank.preferred_hour.astype(np.float32))
    return pa.table(cols, metadata={"time_preference": repr(float(bank.spec.time_preference))})
