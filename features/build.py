"""Raw canonical tables -> monthly customer feature tables (pure functions, no I/O).

One row per customer and month-end snapshot from the first month the customer is known to the
bank (client, former client, or prospect seen on the web or in a branch). Each table becomes
one Feast feature view; `event_timestamp` is the snapshot date. A value at a snapshot uses only
what was known by then: transactions count once posted, windows end at the snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from nextbest.config import Catalogue, SegmentsConfig
from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP, PRODUCT_ID, SNAPSHOT_DATE
from nextbest.schema import SchemaError
from nextbest.features.segments import lifecycle_states, segment_frame

PROFILE_VIEW = "customer_profile"
HOLDINGS_VIEW = "customer_holdings"
ACTIVITY_VIEW = "customer_activity"
SEGMENTS_VIEW = "customer_segments"
VIEWS = (PROFILE_VIEW, HOLDINGS_VIEW, ACTIVITY_VIEW, SEGMENTS_VIEW)

CATEGORICAL_FEATURES = ("gender", "region", "last_offer_response", "lifecycle", "relationship", "product_load",
                        "balance_tier", "value_tier")
# Served with the profile so every decision can enforce them, but never model inputs.
POLICY_FEATURES = ("marketing_opt_out", "consent_email", "consent_push", "consent_sms", "consent_call")
HOLDING_LAGS = (1, 2, 3, 6, 12)
SPEND_CATEGORIES = ("groceries", "utilities", "travel", "entertainment", "shopping", "transfer_out")
NEVER = 99  # "months since" for events never observed
NO_CONTACT_DAYS = 999


@dataclass(frozen=True)
class MonthGrid:
    """Customers x months index shared by all feature computations."""

    customers: pd.Index  # customer_id; position = row in the arrays
    months: pd.DatetimeIndex  # month-end snapshot dates
    held: np.ndarray  # bool [n_customers, n_months, n_products]
    known: np.ndarray  # bool [n_customers, n_months]: client, former client or seen by then

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(customer index, month index) of every feature row, in output order."""
        return np.nonzero(self.known)


def snapshot_months(snapshot_dates) -> pd.DatetimeIndex:
    """The sorted distinct snapshot dates: the months every customer gets a row for."""
    return pd.DatetimeIndex(sorted(pd.to_datetime(pd.Series(snapshot_dates)).unique()))


def no_snapshots(holdings: object) -> SchemaError:
    """The error for a bank whose holdings (file `holdings`) hold no monthly snapshot."""
    return SchemaError(f"{holdings}: no monthly snapshots, so there are no customer-month features to build "
                       "(contact-level data such as uci-bank-marketing feeds `nextbest campaign` instead)")


def month_grid(customers: pd.DataFrame, holdings: pd.DataFrame, interactions: pd.DataFrame,
               products: list[str], months: pd.DatetimeIndex | None = None) -> MonthGrid:
    """Builds the holdings cube and the set of known customer-months.

    Args:
        months: the bank's snapshot dates, when `holdings` is only part of the bank; by default
            those in `holdings`.
    """
    cust_index = pd.Index(customers[CUSTOMER_ID].astype(str).unique(), name=CUSTOMER_ID)
    months = snapshot_months(holdings[SNAPSHOT_DATE]) if months is None else months
    if len(months) == 0:
        raise no_snapshots("holdings.parquet")
    held = np.zeros((len(cust_index), len(months), len(products)), dtype=bool)
    ci = cust_index.get_indexer(holdings[CUSTOMER_ID])
    mi = months.get_indexer(pd.to_datetime(holdings[SNAPSHOT_DATE]))
    pi = pd.Index(products).get_indexer(holdings[PRODUCT_ID])
    ok = (ci >= 0) & (mi >= 0) & (pi >= 0)
    held[ci[ok], mi[ok], pi[ok]] = True

    seen = np.zeros((len(cust_index), len(months)), dtype=bool)
    if len(interactions):
        ici = cust_index.get_indexer(interactions[CUSTOMER_ID])
        imi = np.searchsorted(months.values, pd.to_datetime(interactions["event_date"]).values.astype("datetime64[D]"))
        ok = (ici >= 0) & (imi < len(months))
        seen[ici[ok], imi[ok]] = True
    known = np.logical_or.accumulate(held.any(2) | seen, axis=1)
    return MonthGrid(cust_index, months, held, known)


def _frame(grid: MonthGrid, columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """Flattens [n_customers, n_months] (or [n_customers]) arrays into rows for known customer-months."""
    c, m = grid.rows()
    out = {CUSTOMER_ID: grid.customers.values[c], EVENT_TIMESTAMP: grid.months.values[m]}
    for name, arr in columns.items():
        out[name] = arr[c, m] if arr.ndim == 2 else arr[c]
    df = pd.DataFrame(out)
    df[EVENT_TIMESTAMP] = pd.to_datetime(df[EVENT_TIMESTAMP]).dt.tz_localize("UTC")
    return df


def _f32(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in columns.items()}


# -- profile -----------------------------------------------------------------------------------

def profile_features(customers: pd.DataFrame, grid: MonthGrid) -> pd.DataFrame:
    """Age, income, tenure, demographics, and the consent flags every decision must enforce."""
    cust = customers.drop_duplicates(CUSTOMER_ID).set_index(CUSTOMER_ID).reindex(grid.customers)
    months = grid.months.to_numpy()
    birth = pd.to_datetime(cust["birth_date"]).to_numpy()
    age = np.floor((months[None, :] - birth[:, None]).astype("timedelta64[D]").astype(float) / 365.25)
    join = pd.to_datetime(cust["join_date"]).to_numpy()
    tenure = (months[None, :] - join[:, None]).astype("timedelta64[D]").astype(float) / 30.44
    income = cust["income"].to_numpy(dtype=float)
    return _frame(grid, _f32({
        "age": np.nan_to_num(age, nan=-1.0),
        "income": np.nan_to_num(income, nan=0.0),
        "income_missing": np.isnan(income).astype(np.int64),
        "tenure_months": np.where(np.isnan(tenure), -1.0, np.maximum(tenure, -1.0)),
        "gender": cust["gender"].fillna("unknown").astype(str).to_numpy(),
        "region": cust["region"].fillna("unknown").astype(str).to_numpy(),
        # A missing flag is the restrictive value: opted out, no consent.
        **{c: cust[c].fillna(c == "marketing_opt_out").astype(bool).to_numpy().astype(np.int64)
           for c in POLICY_FEATURES},
    }))


# -- holdings ----------------------------------------------------------------------------------

def _shift(x: np.ndarray, lag: int, fill=0) -> np.ndarray:
    """x shifted `lag` months later along axis 1 (value at t is x at t - lag)."""
    out = np.full_like(x, fill)
    if lag < x.shape[1]:
        out[:, lag:] = x[:, :-lag]
    return out


def _months_since(event: np.ndarray) -> np.ndarray:
    """Months since the last True along axis 1 (0 = this month), NEVER if none yet."""
    idx = np.arange(event.shape[1]).reshape((1, -1) + (1,) * (event.ndim - 2))
    last = np.maximum.accumulate(np.where(event, idx, -1), axis=1)
    return np.where(last >= 0, idx - last, NEVER).astype(np.float32)


def holdings_features(holdings: pd.DataFrame, grid: MonthGrid, products: list[str]) -> pd.DataFrame:
    """Product flags with lags 1/2/3/6/12, months since each product's last acquisition and
    closure (the features that won the Santander competition), product count and balances."""
    held = grid.held
    lag1 = _shift(held, 1, False)
    added, dropped = held & ~lag1, ~held & lag1
    # The first snapshot has no history: nothing counts as added or dropped there.
    added[:, 0] = dropped[:, 0] = False

    n_c, n_m = held.shape[:2]
    balance = np.zeros((n_c, n_m))
    if "balance" in holdings:
        ci = grid.customers.get_indexer(holdings[CUSTOMER_ID])
        mi = grid.months.get_indexer(pd.to_datetime(holdings[SNAPSHOT_DATE]))
        ok = (ci >= 0) & (mi >= 0)
        np.add.at(balance, (ci[ok], mi[ok]), holdings["balance"].fillna(0).to_numpy(dtype=float)[ok])

    cols: dict[str, np.ndarray] = {}
    for j, p in enumerate(products):
        cols[f"held_{p}"] = held[:, :, j].astype(np.int64)
    for lag in HOLDING_LAGS:
        shifted = _shift(held, lag, False)
        for j, p in enumerate(products):
            cols[f"held_lag{lag}_{p}"] = shifted[:, :, j].astype(np.int64)
    since_add, since_drop = _months_since(added), _months_since(dropped)
    for j, p in enumerate(products):
        cols[f"months_since_acq_{p}"] = since_add[:, :, j]
        cols[f"months_since_close_{p}"] = since_drop[:, :, j]
    cols["n_products"] = held.sum(2).astype(np.int64)
    cols["n_products_change_3m"] = (held.sum(2) - _shift(held.sum(2), 3, 0) * (np.arange(n_m) >= 3)).astype(np.int64)
    cols["months_since_acquisition"] = _months_since(added.any(2))
    cols["months_since_closure"] = _months_since(dropped.any(2))
    cols["total_balance"] = balance
    first = np.repeat(balance[:, :1], n_m, axis=1)
    cols["balance_change_3m"] = balance - np.where(np.arange(n_m) >= 3, _shift(balance, 3, 0.0), first)
    cols["balance_change_6m"] = balance - np.where(np.arange(n_m) >= 6, _shift(balance, 6, 0.0), first)
    return _frame(grid, _f32(cols))


# -- activity ----------------------------------------------------------------------------------

class _Events:
    """Dated rows of one table, sorted by date, for windowed sums ending at each snapshot."""

    def __init__(self, df: pd.DataFrame, grid: MonthGrid, date_col: str, known_col: str | None = None):
        ci = grid.customers.get_indexer(df[CUSTOMER_ID]) if len(df) else np.array([], int)
        dates = pd.to_datetime(df[date_col]).to_numpy() if len(df) else np.array([], "datetime64[ns]")
        keep = ci >= 0
        order = np.argsort(dates[keep], kind="stable")
        self.rows = np.flatnonzero(keep)[order]
        self.ci = ci[keep][order]
        self.dates = dates[keep][order].astype("datetime64[ns]")
        self.known = (pd.to_datetime(df[known_col]).to_numpy()[self.rows].astype("datetime64[ns]")
                      if known_col and len(df) else None)
        self.grid = grid

    def window_sum(self, values: np.ndarray, days: int, mask: np.ndarray | None = None) -> np.ndarray:
        """Sum of `values` (aligned with the original frame) in (snapshot - days, snapshot], per customer-month."""
        grid = self.grid
        out = np.zeros((len(grid.customers), len(grid.months)))
        vals = values[self.rows]
        sel = mask[self.rows] if mask is not None else None
        for m, snap in enumerate(grid.months.values.astype("datetime64[ns]")):
            lo = np.searchsorted(self.dates, snap - np.timedelta64(days, "D"), side="right")
            hi = np.searchsorted(self.dates, snap + np.timedelta64(1, "D"), side="left")
            s = slice(lo, hi)
            ok = np.ones(hi - lo, dtype=bool)
            if self.known is not None:
                ok &= self.known[s] <= snap + np.timedelta64(1, "D") - np.timedelta64(1, "ns")
            if sel is not None:
                ok &= sel[s]
            out[:, m] = np.bincount(self.ci[s][ok], weights=vals[s][ok], minlength=len(grid.customers))
        return out


def activity_features(transactions: pd.DataFrame, interactions: pd.DataFrame, offers: pd.DataFrame | None,
                      grid: MonthGrid, products: list[str]) -> pd.DataFrame:
    """Money flows over 30/90/180 days, spending by category, detected salary, digital engagement
    over 7/30 days, product-page views, service contacts over 90 days and offer history."""
    cols: dict[str, np.ndarray] = {}
    # A transaction delivered twice counts once; the same reference on two customers' accounts (a
    # transfer between them) counts for each.
    tx = transactions.drop_duplicates([CUSTOMER_ID, "txn_id"]) if "txn_id" in transactions else transactions
    tx = tx.reset_index(drop=True)
    ev = _Events(tx, grid, "txn_date", known_col="posted_date")
    amount = tx["amount"].to_numpy(dtype=float)
    inflow, outflow = (tx["direction"] == "in").to_numpy(), (tx["direction"] == "out").to_numpy()
    category = tx["category"].to_numpy()
    for days in (30, 90, 180):
        cols[f"inflow_{days}d"] = ev.window_sum(amount, days, inflow)
        cols[f"outflow_{days}d"] = ev.window_sum(amount, days, outflow)
        cols[f"outflow_ratio_{days}d"] = cols[f"outflow_{days}d"] / (cols[f"inflow_{days}d"] + 50.0 * days / 30)
    cols["n_transactions_30d"] = ev.window_sum(np.ones(len(tx)), 30)
    salary = category == "salary"
    cols["salary_90d"] = ev.window_sum(amount, 90, salary)
    # A salary is "detected" when it arrived in at least two of the last three months.
    cols["salary_detected"] = (ev.window_sum(np.ones(len(tx)), 90, salary) >= 2).astype(np.int64)
    for cat in SPEND_CATEGORIES:
        cols[f"spend_{cat}_30d"] = ev.window_sum(amount, 30, category == cat)
        cols[f"spend_{cat}_90d"] = ev.window_sum(amount, 90, category == cat)
    # Inflow this month against the average of the three months before: falling inflows precede churn.
    cols["inflow_trend"] = cols["inflow_30d"] - (ev.window_sum(amount, 120, inflow) - cols["inflow_30d"]) / 3

    ie = _Events(interactions.reset_index(drop=True), grid, "event_date")
    counts = interactions["count"].to_numpy(dtype=float)
    kinds = interactions["event_type"].to_numpy()
    for kind, name in (("login_app", "logins_app"), ("login_web", "logins_web")):
        for days in (7, 30):
            cols[f"{name}_{days}d"] = ie.window_sum(counts, days, kinds == kind)
    logins_30 = cols["logins_app_30d"] + cols["logins_web_30d"]
    logins_60 = ie.window_sum(counts, 60, np.isin(kinds, ("login_app", "login_web")))
    cols["logins_change_30d"] = logins_30 - (logins_60 - logins_30)
    views = kinds == "page_view"
    cols["page_views_7d"] = ie.window_sum(counts, 7, views)
    cols["page_views_30d"] = ie.window_sum(counts, 30, views)
    product_col = interactions["product_id"].to_numpy()
    for p in products:
        cols[f"views_{p}_30d"] = ie.window_sum(counts, 30, views & (product_col == p))
    cols["calls_90d"] = ie.window_sum(counts, 90, kinds == "call")
    cols["complaints_90d"] = ie.window_sum(counts, 90, kinds == "complaint")
    cols.update(offer_history(offers, grid))
    return _frame(grid, _f32(cols))


def offer_history(offers: pd.DataFrame | None, grid: MonthGrid) -> dict[str, np.ndarray]:
    """Offers seen and accepted over 180 days, days since the last contact and its response."""
    shape = (len(grid.customers), len(grid.months))
    if offers is None or not len(offers):
        return {"offers_180d": np.zeros(shape), "offers_accepted_180d": np.zeros(shape),
                "days_since_last_offer": np.full(shape, float(NO_CONTACT_DAYS)),
                "last_offer_response": np.full(shape, "none", dtype=object)}
    offers = offers.reset_index(drop=True)
    oe = _Events(offers, grid, "offered_at")
    accepted = (offers["response"] == "accept").to_numpy()
    out = {"offers_180d": oe.window_sum(np.ones(len(offers)), 180),
           "offers_accepted_180d": oe.window_sum(accepted.astype(float), 180)}
    days = np.full(shape, float(NO_CONTACT_DAYS))
    last = np.full(shape, "none", dtype=object)
    responses = offers["response"].to_numpy()[oe.rows]
    for m, snap in enumerate(grid.months.values.astype("datetime64[ns]")):
        end = snap + np.timedelta64(1, "D")
        hi = np.searchsorted(oe.dates, end, side="left")
        # Last offer per customer before the snapshot (rows are sorted by date).
        rev_customers, rev_first = np.unique(oe.ci[:hi][::-1], return_index=True)
        idx = hi - 1 - rev_first
        days[rev_customers, m] = (end - oe.dates[idx]) / np.timedelta64(1, "D")
        last[rev_customers, m] = responses[idx]
    out["days_since_last_offer"] = np.minimum(np.floor(days), NO_CONTACT_DAYS)
    out["last_offer_response"] = last
    return out


# -- segments ----------------------------------------------------------------------------------

def segments_features(base: pd.DataFrame, grid: MonthGrid, catalogue: Catalogue, cfg: SegmentsConfig,
                      value_tiers: bool = True) -> pd.DataFrame:
    """Lifecycle state, rule-based segments, need flags and value tier at every snapshot.

    Args:
        base: profile, holdings and activity columns for the grid's rows, in the grid's row order.
        value_tiers: rank the grid's customers into value tiers; without, `value_tier` is left to
            the caller (it ranks within a month, so a partition of the bank cannot set it alone).
    """
    active_month = np.zeros(grid.known.shape, dtype=bool)
    c, m = grid.rows()
    activity = (base["n_transactions_30d"].to_numpy() > 0) | (base["logins_app_30d"].to_numpy() > 0) | \
               (base["logins_web_30d"].to_numpy() > 0)
    active_month[c, m] = activity
    states = lifecycle_states(grid.held, active_month, grid.known, cfg.lifecycle.new_months,
                              cfg.lifecycle.dormant_months)
    margins = np.array([p.margin for p in catalogue.products])
    yearly_margin = (grid.held[c, m] * margins).sum(1)
    cols = {"lifecycle": states[c, m], **segment_frame(base, cfg, yearly_margin, value_tiers)}
    out = base[[CUSTOMER_ID, EVENT_TIMESTAMP]].copy()
    for k, v in cols.items():
        out[k] = v
    return out


def build_feature_tables(raw: dict[str, pd.DataFrame], catalogue: Catalogue, segments: SegmentsConfig,
                         months: pd.DatetimeIndex | None = None, value_tiers: bool = True) -> dict[str, pd.DataFrame]:
    """All feature views from the raw tables.

    Args:
        raw: canonical tables by name (`customers`, `holdings`, `transactions`, `interactions`,
            optionally `offers`).
        catalogue: the product catalogue (order of products, margins).
        segments: segment and lifecycle rules.
        months: the bank's snapshot dates when `raw` holds a partition of its customers.
        value_tiers: set `value_tier` (False for a partition: see `segments_features`).

    Returns:
        Feature view name -> DataFrame with `customer_id`, `event_timestamp` and features; all
        tables share the same rows in the same order.
    """
    products = catalogue.ids
    grid = month_grid(raw["customers"], raw["holdings"], raw["interactions"], products, months)
    profile = profile_features(raw["customers"], grid)
    holdings = holdings_features(raw["holdings"], grid, products)
    activity = activity_features(raw["transactions"], raw["interactions"], raw.get("offers"), grid, products)
    keys = [CUSTOMER_ID, EVENT_TIMESTAMP]
    base = pd.concat([profile, holdings.drop(columns=keys), activity.drop(columns=keys)], axis=1)
    return {
        PROFILE_VIEW: profile,
        HOLDINGS_VIEW: holdings,
        ACTIVITY_VIEW: activity,
        SEGMENTS_VIEW: segments_features(base, grid, catalogue, segments, value_tiers),
    }
