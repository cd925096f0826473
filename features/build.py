"""Raw canonical tables -> monthly customer feature tables (pure functions, no I/O).

One row per customer and month-end snapshot in which the customer is known to the bank.
Each table becomes one Feast feature view; `event_timestamp` is the snapshot date, and a
value at a snapshot uses only what was known by then (transactions are counted once posted).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP, PRODUCT_ID, SNAPSHOT_DATE
from simulation.params import SPEND_CATEGORIES

PROFILE_VIEW = "customer_profile"
HOLDINGS_VIEW = "customer_holdings"
ACTIVITY_VIEW = "customer_activity"
CATEGORICAL_FEATURES = ("gender", "region")
# Served with the profile so every decision can enforce them, but never model inputs.
POLICY_FEATURES = ("marketing_opt_out", "consent_email", "consent_push", "consent_sms", "consent_call")


@dataclass(frozen=True)
class MonthGrid:
    """Customers x months index shared by all feature computations."""

    customers: pd.Index  # customer_id, position = row in the cube
    months: pd.DatetimeIndex  # month-end snapshot dates
    held: np.ndarray  # bool, shape (n_customers, n_months, n_products)
    known: np.ndarray  # bool, shape (n_customers, n_months): customer is a client, former client or seen


def month_grid(customers: pd.DataFrame, holdings: pd.DataFrame, interactions: pd.DataFrame,
               products: list[str]) -> MonthGrid:
    """Builds the holdings cube and the set of known customer-months."""
    cust_index = pd.Index(customers[CUSTOMER_ID].astype(str).unique(), name=CUSTOMER_ID)
    months = pd.DatetimeIndex(sorted(pd.to_datetime(holdings[SNAPSHOT_DATE]).unique()))
    held = np.zeros((len(cust_index), len(months), len(products)), dtype=bool)
    ci = cust_index.get_indexer(holdings[CUSTOMER_ID])
    mi = months.get_indexer(pd.to_datetime(holdings[SNAPSHOT_DATE]))
    pi = pd.Index(products).get_indexer(holdings[PRODUCT_ID])
    ok = (ci >= 0) & (mi >= 0) & (pi >= 0)
    held[ci[ok], mi[ok], pi[ok]] = True

    seen = np.zeros((len(cust_index), len(months)), dtype=bool)
    if len(interactions):
        ici = cust_index.get_indexer(interactions[CUSTOMER_ID])
        imi = np.searchsorted(months.values, pd.to_datetime(interactions["event_date"]).values)
        ok = (ici >= 0) & (imi < len(months))
        seen[ici[ok], imi[ok]] = True
    client = held.any(2)
    # Known from the first month the customer was a client or was seen, onwards.
    known = np.logical_or.accumulate(client | seen, axis=1)
    return MonthGrid(cust_index, months, held, known)


def _frame(grid: MonthGrid, columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """Flattens (customers, months) arrays into rows for the known customer-months."""
    c, m = np.nonzero(grid.known)
    out = {CUSTOMER_ID: grid.customers.values[c],
           EVENT_TIMESTAMP: grid.months.values[m]}
    for name, arr in columns.items():
        out[name] = arr[c, m] if arr.ndim == 2 else arr[c]
    df = pd.DataFrame(out)
    df[EVENT_TIMESTAMP] = pd.to_datetime(df[EVENT_TIMESTAMP]).dt.tz_localize("UTC")
    return df


def profile_features(customers: pd.DataFrame, grid: MonthGrid) -> pd.DataFrame:
    """Age, income, tenure and demographics per customer-month."""
    cust = customers.drop_duplicates(CUSTOMER_ID).set_index(CUSTOMER_ID).reindex(grid.customers)
    birth = pd.to_datetime(cust["birth_date"]).to_numpy()
    months = grid.months.to_numpy()
    age_days = (months[None, :] - birth[:, None]).astype("timedelta64[D]").astype(float)
    age = np.floor(age_days / 365.25)
    join = pd.to_datetime(cust["join_date"]).to_numpy()
    tenure = (months[None, :] - join[:, None]).astype("timedelta64[D]").astype(float) / 30.44
    tenure = np.where(np.isnan(tenure), -1.0, np.maximum(tenure, -1.0))
    income = cust["income"].to_numpy(dtype=float)
    return _frame(grid, {
        "age": np.nan_to_num(age, nan=-1.0).astype(np.float32),
        "income": np.nan_to_num(income, nan=0.0).astype(np.float32),
        "income_missing": np.isnan(income).astype(np.int64),
        "tenure_months": tenure.astype(np.float32),
        "gender": cust["gender"].fillna("unknown").astype(str).to_numpy(),
        "region": cust["region"].fillna("unknown").astype(str).to_numpy(),
        # A missing flag is treated as the restrictive value: opted out, no consent.
        **{c: cust[c].fillna(c == "marketing_opt_out").astype(bool).to_numpy().astype(np.int64)
           for c in POLICY_FEATURES},
    })


def holdings_features(holdings: pd.DataFrame, grid: MonthGrid, products: list[str]) -> pd.DataFrame:
    """Product flags, their one-month lag, product count, balances, months since last change."""
    held = grid.held
    n_c, n_m, _ = held.shape
    lag1 = np.concatenate([np.zeros((n_c, 1, held.shape[2]), bool), held[:, :-1]], axis=1)
    added = held & ~lag1
    added[:, 0] = False
    dropped = ~held & lag1
    months_idx = np.arange(n_m)[None, :]

    def months_since(event: np.ndarray) -> np.ndarray:
        last = np.where(event, months_idx, -1)
        last = np.maximum.accumulate(last, axis=1)
        return np.where(last >= 0, months_idx - last, 99).astype(np.float32)

    balance = np.zeros((n_c, n_m))
    ci = grid.customers.get_indexer(holdings[CUSTOMER_ID])
    mi = grid.months.get_indexer(pd.to_datetime(holdings[SNAPSHOT_DATE]))
    if "balance" in holdings:
        ok = (ci >= 0) & (mi >= 0)
        np.add.at(balance, (ci[ok], mi[ok]), holdings["balance"].fillna(0).to_numpy()[ok])
    balance_3m = np.concatenate([np.repeat(balance[:, :1], 3, axis=1), balance], axis=1)[:, :n_m]

    cols: dict[str, np.ndarray] = {}
    for j, p in enumerate(products):
        cols[f"held_{p}"] = held[:, :, j].astype(np.int64)
    for j, p in enumerate(products):
        cols[f"held_lag1_{p}"] = lag1[:, :, j].astype(np.int64)
    cols["n_products"] = held.sum(2).astype(np.int64)
    cols["months_since_acquisition"] = months_since(added.any(2))
    cols["months_since_closure"] = months_since(dropped.any(2))
    cols["total_balance"] = balance.astype(np.float32)
    cols["balance_change_3m"] = (balance - balance_3m).astype(np.float32)
    return _frame(grid, cols)


def _monthly_sum(df: pd.DataFrame, grid: MonthGrid, date_col: str, value: np.ndarray,
                 known_col: str | None = None) -> np.ndarray:
    """Sums `value` per customer and month-end; rows known only after the month end are dropped."""
    out = np.zeros((len(grid.customers), len(grid.months)))
    if not len(df):
        return out
    ci = grid.customers.get_indexer(df[CUSTOMER_ID])
    dates = pd.to_datetime(df[date_col]).values
    mi = np.searchsorted(grid.months.values, dates)
    ok = (ci >= 0) & (mi < len(grid.months))
    if known_col is not None:
        known_at = pd.to_datetime(df[known_col]).values
        ok &= known_at <= grid.months.values[np.minimum(mi, len(grid.months) - 1)]
    np.add.at(out, (ci[ok], mi[ok]), value[ok])
    return out


def _rolling(x: np.ndarray, months: int) -> np.ndarray:
    """Sum over the last `months` months along axis 1 (the month itself included)."""
    c = np.cumsum(np.pad(x, ((0, 0), (1, 0))), axis=1)
    idx = np.arange(1, x.shape[1] + 1)
    return c[:, idx] - c[:, np.maximum(idx - months, 0)]


def activity_features(transactions: pd.DataFrame, interactions: pd.DataFrame, grid: MonthGrid,
                      products: list[str]) -> pd.DataFrame:
    """Money flows, spending by category, digital engagement, page views and service contacts."""
    tx = transactions.drop_duplicates("txn_id") if "txn_id" in transactions else transactions
    amount = tx["amount"].to_numpy(dtype=float)
    cols: dict[str, np.ndarray] = {}

    def tx_sum(mask: np.ndarray) -> np.ndarray:
        return _monthly_sum(tx[mask], grid, "txn_date", amount[mask], known_col="posted_date")

    inflow = tx_sum((tx["direction"] == "in").to_numpy())
    outflow = tx_sum((tx["direction"] == "out").to_numpy())
    salary = tx_sum((tx["category"] == "salary").to_numpy())
    cols["inflow_1m"] = inflow
    cols["outflow_1m"] = outflow
    cols["inflow_3m"] = _rolling(inflow, 3)
    cols["outflow_3m"] = _rolling(outflow, 3)
    cols["salary_1m"] = salary
    cols["salary_detected"] = (_rolling((salary > 0).astype(float), 3) >= 2).astype(np.int64)
    for cat in (*SPEND_CATEGORIES, "transfer_out"):
        cols[f"spend_{cat}_1m"] = tx_sum((tx["category"] == cat).to_numpy())
    cols["outflow_ratio_1m"] = outflow / (inflow + 50.0)
    cols["outflow_ratio_3m"] = cols["outflow_3m"] / (cols["inflow_3m"] + 150.0)

    counts = interactions["count"].to_numpy(dtype=float)
    kinds = interactions["event_type"].to_numpy()

    def ev_sum(mask: np.ndarray) -> np.ndarray:
        return _monthly_sum(interactions[mask], grid, "event_date", counts[mask])

    logins = ev_sum(np.isin(kinds, ("login_app", "login_web")))
    cols["logins_app_1m"] = ev_sum(kinds == "login_app")
    cols["logins_web_1m"] = ev_sum(kinds == "login_web")
    cols["logins_3m"] = _rolling(logins, 3)
    prev = np.concatenate([logins[:, :1], logins[:, :-1]], axis=1)
    cols["logins_change_1m"] = logins - prev
    calls = ev_sum(kinds == "call")
    complaints = ev_sum(kinds == "complaint")
    cols["calls_3m"] = _rolling(calls, 3)
    cols["complaints_3m"] = _rolling(complaints, 3)
    views = kinds == "page_view"
    prod_col = interactions["product_id"].to_numpy()
    for p in products:
        cols[f"views_{p}_1m"] = ev_sum(views & (prod_col == p))
    return _frame(grid, {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in cols.items()})


def build_feature_tables(raw: dict[str, pd.DataFrame], products: list[str]) -> dict[str, pd.DataFrame]:
    """All feature views from the raw tables.

    Args:
        raw: canonical tables by name (`customers`, `holdings`, `transactions`, `interactions`).
        products: product ids in catalogue order.

    Returns:
        Feature view name -> DataFrame with `customer_id`, `event_timestamp` and features.
    """
    grid = month_grid(raw["customers"], raw["holdings"], raw["interactions"], products)
    return {
        PROFILE_VIEW: profile_features(raw["customers"], grid),
        HOLDINGS_VIEW: holdings_features(raw["holdings"], grid, products),
        ACTIVITY_VIEW: activity_features(raw["transactions"], raw["interactions"], grid, products),
    }
