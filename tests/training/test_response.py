"""The campaign-response model on the bank's own data: its offer history or its own contact table, each
contact with the customer's Feast features at the month end before it."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from nextbest.config import TrainConfig
from nextbest.config.training import ResponseLabel
from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP
from nextbest.feature_repo import store as feast_store
from nextbest.settings import Paths
from nextbest.training.datasets import LabelError
from nextbest.training.response import train_response

FAST = dict(hidden=[32], max_epochs=8, patience=3, batch_size=256, min_positives=5)


@pytest.fixture(scope="module")
def paths(feast_bank, tmp_path_factory):
    paths = Paths.from_workdir(tmp_path_factory.mktemp("response") / "work").ensure()
    for folder in ("raw", "features"):
        shutil.copytree(feast_bank.root / folder, paths.root / folder, dirs_exist_ok=True)
    feast_store.apply(paths)
    return paths


def _contacts(paths: Paths, months: int, seed: int = 5) -> pd.DataFrame:
    """A campaign's calls: a few days into each of the last `months` months, older clients more willing."""
    profile = pd.read_parquet(paths.features / "customer_profile.parquet",
                              columns=[CUSTOMER_ID, EVENT_TIMESTAMP, "age"])
    ends = sorted(profile[EVENT_TIMESTAMP].unique())[-months:]
    rows = profile[profile[EVENT_TIMESTAMP].isin(ends)]
    rng = np.random.default_rng(seed)
    p = 1 / (1 + np.exp(-(rows["age"].to_numpy() - 50) / 6))
    return pd.DataFrame({"customer_id": rows[CUSTOMER_ID].to_numpy(),
                         "contacted_at": (rows[EVENT_TIMESTAMP].dt.tz_localize(None) + pd.Timedelta(days=3, hours=10))
                         .dt.strftime("%Y-%m-%d %H:%M").to_numpy(),
                         "label": np.where(rng.random(len(rows)) < p, "yes", "no"),
                         "product_id": rng.choice(["mortgage", "savings_account", "credit_card"], len(rows)),
                         "channel": rng.choice(["call_center", "email"], len(rows))})


def test_the_offer_history_without_enough_acceptances_says_what_it_holds(paths):
    offers = pd.read_parquet(paths.raw / "offers.parquet")
    accepted = int((offers["response"] == "accept").sum())
    assert accepted < 5, "the small bank should hold too few acceptances to train on"
    said = []
    with pytest.raises(LabelError, match=r"response labels: the training window .* positive\(s\).*accepted offers "
                                         r"\(campaign response\).*raw/offers.parquet"):
        train_response(paths, TrainConfig(**FAST), said.append)
    last = pd.to_datetime(offers["offered_at"]).max()
    still_open = ((offers["response"] == "no_response")
                  & (pd.to_datetime(offers["offered_at"]) > last - pd.Timedelta(days=30))).sum()
    assert still_open > 0 and any(f"{still_open:,} offers of the last 30 days have no response yet" in line
                                  for line in said), said


def test_a_contact_on_a_snapshot_day_learns_from_the_snapshot_before():
    from nextbest.training.response import response_entity

    months = pd.DatetimeIndex(["2026-01-31", "2026-02-28"])
    frame = pd.DataFrame({"customer_id": ["a", "a", "b"],
                          "contacted_at": pd.to_datetime(["2026-02-28 10:00", "2026-03-01 00:00", "2026-02-27 00:00"]),
                          "label": [True, False, True]})
    entity = response_entity(frame, pd.Series(["a", "b"]), months, "contacts")
    assert entity[EVENT_TIMESTAMP].dt.strftime("%Y-%m-%d").tolist() == ["2026-01-31", "2026-02-28", "2026-01-31"]


def test_the_banks_contact_table_trains_by_month_beside_lightgbm(paths, tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTBEST_PROJECT", str(tmp_path))
    table = _contacts(paths, months=3)
    strangers = pd.DataFrame({"customer_id": ["NOBODY"], "contacted_at": ["2026-05-04"], "label": ["yes"],
                              "product_id": ["mortgage"], "channel": ["email"]})
    pd.concat([table, strangers]).to_csv(tmp_path / "contacts.csv", index=False)
    said = []
    cfg = TrainConfig(**FAST, response=ResponseLabel(definition="table", table="contacts.csv"))
    result = train_response(paths, cfg, said.append)
    assert any("1 of " in line and "contacts name customers not in raw/customers.parquet" in line for line in said)
    assert result.split == "chronological" and len(result.months["test"]) == 1
    assert sum(result.rows.values()) == len(table)
    # Willingness follows age, which the customer's features hold: both models must find it.
    assert result.metrics["test_roc_auc"] > 0.7 and result.metrics["lightgbm_roc_auc"] > 0.7, result.metrics


def test_one_month_of_contacts_is_split_at_random_and_says_so(paths, tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTBEST_PROJECT", str(tmp_path))
    _contacts(paths, months=1).drop(columns=["product_id", "channel"]).to_csv(tmp_path / "c.csv", index=False)
    said = []
    cfg = TrainConfig(**FAST, response=ResponseLabel(definition="table", table="c.csv"))
    result = train_response(paths, cfg, said.append)
    assert result.split == "random"
    assert any(line.startswith("WARNING: the contacts span 1 month(s)") for line in said)
    assert np.isfinite(result.metrics["test_roc_auc"])


def test_a_contact_table_without_its_columns_is_named(paths, tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTBEST_PROJECT", str(tmp_path))
    pd.DataFrame({"customer_id": ["a"], "label": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    cfg = TrainConfig(**FAST, response=ResponseLabel(definition="table", table="bad.csv"))
    with pytest.raises(ValueError, match=r"bad.csv: missing column\(s\) \['contacted_at'\]"):
        train_response(paths, cfg)
