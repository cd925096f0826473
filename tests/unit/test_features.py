import numpy as np
import pandas as pd

from nextbest.config import Catalogue, Product, load_segments
from nextbest.features.build import ACTIVITY_VIEW, HOLDINGS_VIEW, PROFILE_VIEW, SEGMENTS_VIEW, build_feature_tables


def _tiny_bank():
    customers = pd.DataFrame({
        "customer_id": ["A", "B"], "birth_date": pd.to_datetime(["1980-05-01", "1990-01-01"]),
        "gender": ["F", "M"], "region": ["north", "south"], "income": [50000.0, np.nan],
        "join_date": pd.to_datetime(["2020-01-01", "2026-02-15"]), "status": ["active", "active"],
        "marketing_opt_out": [False, True], "consent_email": [True, False], "consent_push": [True, False],
        "consent_sms": [False, False], "consent_call": [False, False]})
    months = pd.to_datetime(["2026-01-31", "2026-02-28", "2026-03-31"])
    holdings = pd.DataFrame({
        "customer_id": ["A", "A", "A", "A", "B", "B"],
        "snapshot_date": [months[0], months[1], months[2], months[2], months[1], months[2]],
        "product_id": ["current_account"] * 3 + ["credit_card"] + ["current_account"] * 2,
        "balance": [100.0, 200.0, 300.0, 0.0, 50.0, 60.0]})
    transactions = pd.DataFrame({
        "txn_id": ["t1", "t1", "t2", "t3"],  # t1 duplicated
        "customer_id": ["A", "A", "A", "A"],
        "txn_date": pd.to_datetime(["2026-02-10", "2026-02-10", "2026-02-20", "2026-03-05"]),
        # t2 is posted after the February month end: it must not count in February.
        "posted_date": pd.to_datetime(["2026-02-11", "2026-02-11", "2026-03-15", "2026-03-06"]),
        "amount": [1000.0, 1000.0, 80.0, 40.0], "direction": ["in", "in", "out", "out"],
        "category": ["salary", "salary", "groceries", "groceries"]})
    interactions = pd.DataFrame({
        "customer_id": ["A", "B"], "event_date": pd.to_datetime(["2026-03-03", "2026-02-20"]),
        "event_type": ["page_view", "login_app"], "product_id": ["credit_card", None], "count": [2, 5]})
    return {"customers": customers, "holdings": holdings, "transactions": transactions,
            "interactions": interactions}


def _catalogue():
    return Catalogue(version=1, products=[
        Product(product_id="current_account", name="Current", category="account", margin=60),
        Product(product_id="credit_card", name="Card", category="card", margin=140)])


def _build():
    segments = load_segments()
    # The shipped rules refer to the full catalogue; keep the groups that fit this two-product bank.
    segments.groups = {"balance_tier": segments.groups["balance_tier"]}
    segments.needs = {"income": segments.needs["income"]}
    return build_feature_tables(_tiny_bank(), _catalogue(), segments)


def _at(df, customer, month):
    ts = pd.Timestamp(month, tz="UTC")
    return df[(df.customer_id == customer) & (df.event_timestamp == ts)].iloc[0]


def test_point_in_time_dedup_and_late_transactions():
    tables = _build()
    act = tables[ACTIVITY_VIEW]
    feb = _at(act, "A", "2026-02-28")
    assert feb.inflow_30d == 1000.0  # duplicate counted once
    assert feb.spend_groceries_30d == 0.0  # t2 was not yet posted at the February snapshot
    mar = _at(act, "A", "2026-03-31")
    assert mar.spend_groceries_30d == 40.0  # t3 only: t2 (Feb 20) is outside the 30 days
    assert mar.spend_groceries_90d == 120.0  # t2 known now, inside 90 days
    assert mar.views_credit_card_30d == 2.0 and mar.page_views_7d == 0.0
    assert _at(act, "B", "2026-02-28").logins_app_30d == 5.0


def test_holdings_lags_profile_and_known_customers():
    tables = _build()
    hold = tables[HOLDINGS_VIEW]
    mar = _at(hold, "A", "2026-03-31")
    assert (mar.held_credit_card, mar.held_lag1_credit_card, mar.n_products) == (1, 0, 2)
    assert (mar.held_lag1_current_account, mar.held_lag2_current_account, mar.held_lag3_current_account) == (1, 1, 0)
    assert mar.months_since_acquisition == 0 and mar.months_since_acq_credit_card == 0
    assert mar.months_since_acq_current_account == 99  # held since before the window: never seen acquired
    assert _at(hold, "A", "2026-02-28").months_since_acquisition == 99
    # B is unknown before it was a client or seen: no January row.
    assert not ((hold.customer_id == "B") & (hold.event_timestamp == pd.Timestamp("2026-01-31", tz="UTC"))).any()
    prof = tables[PROFILE_VIEW]
    b = _at(prof, "B", "2026-03-31")
    assert (b.income, b.income_missing, b.marketing_opt_out, b.consent_email) == (0.0, 1, 1, 0)
    assert _at(prof, "A", "2026-03-31").age == 45


def test_segments_and_lifecycle_per_snapshot():
    seg = _build()[SEGMENTS_VIEW]
    # B joined in February (first product seen then): new; A held products from the first snapshot.
    assert _at(seg, "B", "2026-02-28").lifecycle == "new"
    assert _at(seg, "A", "2026-03-31").lifecycle == "active"
    assert _at(seg, "A", "2026-03-31").yearly_margin == 200.0
    mar = seg[seg.event_timestamp == pd.Timestamp("2026-03-31", tz="UTC")].set_index("customer_id")
    assert mar.loc["A", "value_tier"] == "top" and mar.loc["B", "value_tier"] == "rest"
    assert set(mar.balance_tier) == {"low"}
