"""Drift monitoring, piece by piece: injected drift leaves earlier months alone, look-backs, censoring,
warm-up masking, natural variation, the config's errors, the acceptance section. The whole monitor
on drifted and undrifted banks is tests/monitoring/test_drift_banks.py (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from nextbest.config import ConfigError, load_catalogue
from nextbest.monitoring import drift as D
from nextbest.config import MonitoringConfig, load_monitoring
from nextbest.settings import Paths
from nextbest.simulation.bank import BankSpec, simulate_frames
from nextbest.simulation.drift import DRIFT_KINDS, DriftSpec

END = pd.Timestamp("2026-09-30")

@pytest.fixture(scope="module")
def config() -> MonitoringConfig:
    return load_monitoring()


def test_drift_leaves_the_months_before_it_untouched():
    catalogue = load_catalogue()
    spec = dict(n_customers=400, n_months=5, seed=3, end=END)
    plain = simulate_frames(catalogue, BankSpec(**spec))
    for kind in DRIFT_KINDS:
        drifted = simulate_frames(catalogue, BankSpec(**spec, drift=DriftSpec(kind, 4)))
        for table in ("raw/holdings", "raw/interactions"):
            date = "snapshot_date" if table == "raw/holdings" else "event_date"
            cut = pd.Timestamp("2026-08-01")
            a, b = plain[table], drifted[table]
            pd.testing.assert_frame_equal(a[pd.to_datetime(a[date]) < cut].reset_index(drop=True),
                                          b[pd.to_datetime(b[date]) < cut].reset_index(drop=True))
        tx = drifted["raw/transactions"]
        last = pd.to_datetime(tx["txn_date"]) >= pd.Timestamp("2026-09-01")
        base = plain["raw/transactions"]
        base_last = pd.to_datetime(base["txn_date"]) >= pd.Timestamp("2026-09-01")
        ratio = tx.loc[last & (tx.category == "salary"), "amount"].sum() / \
            base.loc[base_last & (base.category == "salary"), "amount"].sum()
        if kind == "income_shift":
            assert ratio == pytest.approx(0.75, abs=0.03)


@pytest.mark.parametrize("column, expected", [
    ("held_lag6_debit_card", 6), ("held_lag1_mortgage", 1), ("inflow_180d", 6), ("spend_groceries_90d", 3),
    ("logins_app_30d", 1), ("logins_app_7d", 0), ("logins_change_30d", 2), ("inflow_trend", 4),
    ("balance_change_3m", 3), ("months_since_acq_mortgage", 6), ("days_since_last_offer", 6),
    ("need_saving", 6), ("age", 0), ("income", 0), ("held_mortgage", 0),
])
def test_lookback_months(column, expected):
    assert D.lookback_months(column, censor_cap=6, derived=6) == expected


def test_censor_caps_counters_and_old_responses():
    df = pd.DataFrame({"months_since_acq_x": [0.0, 5.0, 8.0, 99.0], "days_since_last_offer": [3.0, 150, 400, 999],
                       "last_offer_response": ["accept", "reject", "accept", "none"], "age": [30, 40, 50, 60]})
    out, notes = D.censor(df, 6)
    assert out["months_since_acq_x"].tolist() == [0, 5, 6, 6]
    assert out["days_since_last_offer"].max() == np.floor(6 * 30.44)
    assert out["last_offer_response"].tolist() == ["accept", "reject", "none", "none"]
    assert out["age"].tolist() == df["age"].tolist() and "age" not in notes


def test_mask_warmup_hides_only_young_months():
    ref = pd.DataFrame({"a": [1, 2, 3, 4], "b": ["x", "y", "x", "y"]})
    out = D.mask_warmup(ref, np.array([0, 1, 2, 3]), {"a": 2, "b": 0})
    assert out["a"].isna().tolist() == [True, True, False, False]
    assert out["b"].tolist() == ["x", "y", "x", "y"]


def test_natural_variation_widens_the_threshold_of_a_seasonal_column():
    rng = np.random.default_rng(0)
    months = np.repeat(np.arange(6), 2000)
    seasonal = rng.normal(0, 1, len(months)) + np.where(months % 2 == 0, 0.15, -0.15)  # swings every month
    steady = rng.normal(0, 1, len(months))
    ref = pd.DataFrame({"seasonal": seasonal, "steady": steady})
    cur = pd.DataFrame({"seasonal": rng.normal(0.15, 1, 2000), "steady": rng.normal(0.25, 1, 2000)})
    s = D.column_drift(ref, cur, ["seasonal", "steady"], D.DriftSettings(), months=months)
    assert s.columns["seasonal"]["threshold"] > 0.2 and not s.columns["seasonal"]["drifted"]
    assert s.columns["steady"]["threshold"] < 0.15 and s.columns["steady"]["drifted"]


# -- configuration -----------------------------------------------------------------------------

def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "monitoring.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_repository_config_loads(config):
    assert config.gate.max_share_drifted == pytest.approx(0.02)
    assert config.serving.feature_sample_share == pytest.approx(0.05)


@pytest.mark.parametrize("data, named", [
    ({"gate": {"max_share_drifted": 1.5}}, "gate.max_share_drifted"),
    ({"features": {"numerical_method": "ks"}}, "features.numerical_method"),
    ({"gate": {"max_shared_drifted": 0.1}}, "gate.max_shared_drifted"),
    ({"features": {"per_column": {"income": {"threshold": -1}}}}, "features.per_column.income.threshold"),
])
def test_bad_config_names_the_key(tmp_path, data, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_monitoring(_write(tmp_path, data))


# -- the command -------------------------------------------------------------------------------

def _run_cli(*args: str):
    from typer.testing import CliRunner

    from nextbest.cli import app

    return CliRunner().invoke(app, list(args))


def test_wasserstein_matches_evidently_and_categories_match_strings():
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    rng = np.random.default_rng(1)
    ref, cur = pd.Series(rng.lognormal(0, 1, 5000)), pd.Series(rng.lognormal(0.2, 1.1, 3000))
    evidently = get_stattest(ref, cur, ColumnType.Numerical, "wasserstein")(ref, cur, ColumnType.Numerical, None)
    ours, name = D.distance(ref, cur, "wasserstein", D.NUMERICAL)
    assert ours == pytest.approx(evidently.drift_score, rel=1e-9) and name == "Wasserstein distance (normed)"
    labels = np.array(["a", "b", "c"])
    r, c = labels[rng.integers(0, 3, 4000)], labels[rng.choice(3, 4000, p=[0.5, 0.3, 0.2])]
    as_str = D.distance(pd.Series(r), pd.Series(c), "jensenshannon", D.CATEGORICAL)[0]
    as_cat = D.distance(pd.Series(pd.Categorical(r)), pd.Series(pd.Categorical(c)), "jensenshannon", D.CATEGORICAL)[0]
    assert as_cat == pytest.approx(as_str) and as_str > 0.1


@pytest.mark.parametrize("args, message", [
    (["--drift", "recession"], "--drift must be one of income_shift, new_product, behaviour_change"),
    (["--drift", "income_shift", "--drift-from", "1999-01"], "--drift-from 1999-01"),
    (["--drift-from", "2026-08"], "--drift-from needs --drift"),
])
def test_generate_rejects_bad_drift_options(tmp_path, args, message):
    result = _run_cli("generate", "--customers", "50", "--months", "4", "--end", "2026-09-30",
                      "--workdir", str(tmp_path), *args)
    assert result.exit_code == 2
    assert message in result.output.replace("\n", "")


def test_generate_with_drift_from_a_month(tmp_path):
    result = _run_cli("generate", "--customers", "300", "--months", "5", "--end", "2026-09-30", "--seed", "3",
                      "--drift", "new_product", "--drift-from", "2026-08", "--workdir", str(tmp_path))
    assert result.exit_code == 0, result.output
    holdings = pd.read_parquet(tmp_path / "raw" / "holdings.parquet")
    card = holdings[holdings.product_id == "cashback_card"].groupby("snapshot_date").size()
    # The launch shows from August on: far more holders than in July.
    assert card[pd.Timestamp("2026-08-31")] > 3 * card[pd.Timestamp("2026-07-31")]


def _event_log(path: Path, weeks: list[tuple[int, int]], start: float = 1_790_000_000.0) -> None:
    """A decision log with, per week, (offers shown, offers accepted), one offer per decision."""
    import sqlite3

    from nextbest.serving.eventlog import SCHEMA

    con = sqlite3.connect(path)
    con.executescript(SCHEMA)
    n = 0
    for w, (shown, accepted) in enumerate(weeks):
        for i in range(shown):
            n += 1
            at = start + w * 7 * 86400 + i
            offers = json.dumps([{"product_id": "savings_account", "rank": 1, "score": 0.1}])
            con.execute("INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (f"d{n}", at, "p", "mobile_app", 1, offers, "{}", "{}"))
            if i < accepted:
                con.execute("INSERT INTO feedback VALUES (?, ?, ?, ?, ?)",
                            (f"d{n}", "savings_account", "accept", None, at))
    con.commit()
    con.close()


@pytest.mark.parametrize("weeks, passed", [([(300, 30), (300, 27)], True), ([(300, 30), (300, 12)], False)])
def test_acceptance_rate_of_the_last_week_against_the_earlier_ones(tmp_path, config, weeks, passed):
    from nextbest.monitoring.sections import acceptance_section

    paths = Paths.from_workdir(tmp_path).ensure()
    _event_log(paths.events_db, weeks)
    out = acceptance_section(paths, [], config)
    assert [p["shown"] for p in out["periods"]] == [300, 300]
    assert out["reference"]["rate"] == pytest.approx(0.1)
    assert out["relative_drop"] == pytest.approx(1 - weeks[1][1] / 300 / 0.1)
    assert out["passed"] is passed


def test_acceptance_without_enough_offers_is_reported_not_gated(tmp_path, config):
    from nextbest.monitoring.sections import acceptance_section

    paths = Paths.from_workdir(tmp_path).ensure()
    _event_log(paths.events_db, [(20, 5)])
    out = acceptance_section(paths, [], config)
    assert "passed" not in out and "not enough offers" in out["status"]
