"""Drift monitoring on simulated banks: injected drift is flagged, an undrifted bank is not.

Small banks (3,000 customers x 10 months, fixed seeds) built in-process; drift starts in the
last snapshot month, so the reference window (every earlier month) is the undrifted bank.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from nextbest.config import load_catalogue
from nextbest.config import MonitoringConfig, load_monitoring
from nextbest.monitoring.inputs import load_features
from nextbest.monitoring.sections import feature_drift
from nextbest.settings import Paths
from nextbest.simulation.bank import BankSpec
from nextbest.simulation.drift import DriftSpec

N_CUSTOMERS, N_MONTHS, SEED = 3000, 10, 7

pytestmark = pytest.mark.slow

END = pd.Timestamp("2026-09-30")

# What each drift must move (the columns a real bank would see first), and columns it must not.
EXPECTED = {
    "income_shift": {"inflow_30d", "outflow_30d", "inflow_trend", "spend_groceries_30d", "spend_shopping_30d",
                     "spend_transfer_out_30d"},
    "new_product": {"held_cashback_card", "months_since_acq_cashback_card", "views_cashback_card_30d",
                    "months_since_acquisition"},
    "behaviour_change": {"logins_app_30d", "logins_app_7d", "logins_web_30d", "spend_shopping_30d",
                         "spend_groceries_30d"},
}
STABLE = {
    "income_shift": {"age", "tenure_months", "income", "n_products", "held_current_account", "logins_app_30d",
                     "logins_web_30d", "held_cashback_card", "views_cashback_card_30d", "gender", "region"},
    "new_product": {"age", "income", "inflow_30d", "outflow_30d", "logins_app_30d", "spend_groceries_30d",
                    "held_mortgage", "held_current_account", "gender", "region"},
    "behaviour_change": {"age", "income", "inflow_30d", "n_products", "held_cashback_card", "spend_utilities_30d",
                         "held_current_account", "gender", "region"},
}


def _bank(root: Path, kind: str | None) -> Paths:
    from nextbest.features.pipeline import build_features_to
    from nextbest.simulation.write import generate_to

    paths = Paths.from_workdir(root).ensure()
    spec = BankSpec(n_customers=N_CUSTOMERS, n_months=N_MONTHS, seed=SEED, end=END,
                    drift=DriftSpec(kind, N_MONTHS - 1) if kind else None)
    catalogue = load_catalogue()
    generate_to(paths, catalogue, spec)
    build_features_to(paths, catalogue)
    return paths


@pytest.fixture(scope="module")
def config() -> MonitoringConfig:
    return load_monitoring()


@pytest.fixture(scope="module")
def banks(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("drift-banks")
    return {kind or "none": _bank(root / (kind or "none"), kind) for kind in (None, *EXPECTED)}


@pytest.fixture(scope="module")
def results(banks, config) -> dict[str, dict]:
    return {name: feature_drift(load_features(paths), config)[0] for name, paths in banks.items()}


def test_undrifted_bank_flags_almost_nothing(results, config):
    section = results["none"]
    assert section["n_tested"] >= 200
    assert section["share_drifted"] < config.gate.max_share_drifted
    assert len(section["drifted_columns"]) <= 1, section["drifted_columns"]


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_injected_drift_is_flagged_and_stable_columns_are_not(results, config, kind):
    section = results[kind]
    drifted = set(section["drifted_columns"])
    assert EXPECTED[kind] <= drifted, f"missed: {sorted(EXPECTED[kind] - drifted)}"
    assert not (STABLE[kind] & drifted), f"false alarms: {sorted(STABLE[kind] & drifted)}"
    for c in EXPECTED[kind]:
        col = section["columns"][c]
        assert col["score"] >= col["threshold"] > 0
    # Enough columns move for the share gate to fail on every kind of drift.
    assert section["share_drifted"] > config.gate.max_share_drifted


def test_summary_names_test_threshold_and_transform(results):
    cols = results["none"]["columns"]
    assert cols["inflow_30d"]["test"] == "Wasserstein distance (normed)"
    assert cols["held_mortgage"]["test"] == "Jensen-Shannon distance"
    assert cols["months_since_acq_debit_card"]["transform"].startswith("capped at 6 months")
    assert cols["held_lag6_debit_card"]["lookback_months"] == 6
    # 12-month lags cannot be observed in 10 months of data: reported as skipped, never silently dropped.
    assert "held_lag12_debit_card" in results["none"]["skipped"]
    for c in cols.values():
        assert c["threshold"] >= c["base_threshold"]


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "monitoring.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run_cli(*args: str):
    from typer.testing import CliRunner

    from nextbest.cli import app

    return CliRunner().invoke(app, list(args))


def test_monitor_command_exit_codes(banks, tmp_path):
    """0 when the gate passes (undrifted), 1 when it fails (income shift), 2 for a missing file."""
    cols = sorted(EXPECTED["income_shift"] | STABLE["income_shift"])
    config = _write(tmp_path, {"features": {"include": cols, "report_max_rows": 2000}})
    codes = {}
    for name in ("none", "income_shift"):
        work = tmp_path / name
        shutil.copytree(banks[name].root, work)
        result = _run_cli("monitor", "--workdir", str(work), "--config", str(config))
        codes[name] = result.exit_code
        day = next((work / "reports").iterdir())
        summary = json.loads((day / "summary.json").read_text())
        assert summary["passed"] is (result.exit_code == 0)
        assert set(summary["columns"]) == set(cols) - set(summary["sections"]["feature_drift"]["skipped"])
        assert {"score", "test", "threshold", "drifted"} <= set(summary["columns"]["inflow_30d"])
        for f in ("data_drift.html", "data_drift.json", "index.html"):
            assert (day / f).stat().st_size > 0
        assert not list(day.glob(".*"))  # no temporary files left behind
    assert codes == {"none": 0, "income_shift": 1}

    missing = tmp_path / "missing"
    shutil.copytree(banks["none"].root, missing)
    (missing / "features" / "customer_activity.parquet").unlink()
    result = _run_cli("monitor", "--workdir", str(missing), "--config", str(config))
    assert result.exit_code == 2
    assert "customer_activity.parquet: not found" in result.output.replace("\n", "")  # rich wraps long lines


