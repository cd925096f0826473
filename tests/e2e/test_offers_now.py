"""The decision engine read-only (what the console's portrait shows as "offers now"): on a quickstart
work dir, every offer the rules allow ranked by expected value, every held product suppressed with
its rule, an opted-out customer blocked, and not one file of the work directory written, even with
no pseudonymisation key yet and a fallback table older than the features."""

from __future__ import annotations

import os
import shutil
import time

import pandas as pd
import pytest

from nextbest.settings import Paths


def _files(root):
    # A reader of a log in WAL mode has SQLite open (and create, empty) its -wal and -shm files, as the
    # console's log reader does; every other file must stay as it was.
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")
            if p.is_file() and not p.name.endswith(("-shm", "-wal"))}


@pytest.fixture(scope="module")
def workdir(quickstart_workdir, tmp_path_factory):
    wd = tmp_path_factory.mktemp("offers-now") / "work"
    shutil.copytree(quickstart_workdir, wd, ignore=shutil.ignore_patterns("*.log"))
    shutil.rmtree(wd / "secrets")  # no key yet: a reader must not create one
    newest = max((wd / "features").glob("*.parquet"), key=lambda p: p.stat().st_mtime)
    later = time.time() + 5
    os.utime(newest, (later, later))  # the fallback table is now stale: a reader must not rebuild it in place
    return wd


def test_the_read_only_engine_previews_the_ranking_and_writes_nothing(workdir, monkeypatch):
    from nextbest.config import load_catalogue
    from nextbest.serving.engine import DecisionEngine
    from nextbest.serving.privacy import KEY_ENV

    monkeypatch.delenv(KEY_ENV, raising=False)
    before = _files(workdir)
    engine = DecisionEngine(Paths(workdir), readonly=True)
    engine.load()
    assert engine.ready, engine.error

    customers = pd.read_parquet(workdir / "raw" / "customers.parquet")
    holdings = pd.read_parquet(workdir / "raw" / "holdings.parquet")
    latest = holdings[holdings["snapshot_date"] == holdings["snapshot_date"].max()]
    consenting = customers[~customers["marketing_opt_out"].astype(bool)]
    holders = latest[latest["customer_id"].isin(consenting["customer_id"])]
    customer = str(holders["customer_id"].value_counts().index[0])  # the consenting customer holding the most
    held = set(latest.loc[latest["customer_id"] == customer, "product_id"])
    catalogue = set(load_catalogue().ids)

    p = engine.preview(customer, "mobile_app")
    assert p["suppressed_by"] is None and p["offers"] and p["known"]
    values = [o["expected_value"] for o in p["offers"]]
    assert values == sorted(values, reverse=True)
    assert [o["rank"] for o in p["offers"]] == list(range(1, len(values) + 1))
    offered = {o["product_id"] for o in p["offers"]}
    suppressed = {s["product_id"]: s["rule"] for s in p["suppressed"]}
    assert held and all(suppressed.get(h) == "already_held" for h in held) and not offered & held
    assert catalogue <= offered | set(suppressed) and not offered & set(suppressed)
    assert all(0 < o["probability"] < 1 and o["value"] > 0 and o["propensity"] == 1.0 for o in p["offers"])

    # The console's engine reads the feature files' newest rows instead of the online store: the same ranking.
    from nextbest.monitoring.console.files import latest_features

    files_engine = DecisionEngine(Paths(workdir), readonly=True,
                                  features=lambda c: latest_features(workdir / "features", c))
    files_engine.load()
    for who in holders["customer_id"].drop_duplicates().astype(str).head(5):
        online, offline = engine.preview(who, "mobile_app"), files_engine.preview(who, "mobile_app")
        assert [o["product_id"] for o in offline["offers"]] == [o["product_id"] for o in online["offers"]]
        assert [o["probability"] for o in offline["offers"]] == pytest.approx(
            [o["probability"] for o in online["offers"]], abs=1e-6)
        assert offline["churn_risk"] == pytest.approx(online["churn_risk"], abs=1e-6)

    opted_out = str(customers.loc[customers["marketing_opt_out"].astype(bool), "customer_id"].iloc[0])
    blocked = engine.preview(opted_out, "email")
    assert blocked["suppressed_by"] == "marketing_opt_out" and blocked["offers"] == []

    with pytest.raises(RuntimeError, match="read-only"):
        engine.recommend(customer, "mobile_app")
    assert _files(workdir) == before and not (workdir / "secrets").exists()
