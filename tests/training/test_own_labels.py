"""A bank's own churn labels from a one-off extract: one snapshot, a random split said out loud, a champion."""

from __future__ import annotations


import mlflow
import numpy as np
import pandas as pd
import pytest

from nextbest.config import TrainConfig
from nextbest.config.training import ChurnLabel
from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP
from nextbest.feature_repo import store as feast_store
from nextbest.io import read_raw
from nextbest.settings import Paths
from nextbest.training import registry
from nextbest.training.datasets import churn_labels
from nextbest.training.pipeline import train_model

FAST = dict(hidden=[32], max_epochs=3, patience=2, batch_size=256, ensemble=1, min_positives=3)


def test_a_one_snapshot_label_table_trains_a_champion_on_a_random_split(tmp_path, catalogue):
    # A bank of its own, large enough that one month's churners leave a score of them in the test part
    # of a random split (an AUC over a handful of churners says nothing either way).
    from nextbest.features.pipeline import build_features_to
    from nextbest.simulation.bank import BankSpec
    from nextbest.simulation.write import generate_to
    from tests.conftest import END

    paths = Paths.from_workdir(tmp_path / "work").ensure()
    generate_to(paths, catalogue, BankSpec(n_customers=6000, n_months=5, seed=11, end=END))
    build_features_to(paths, catalogue)
    feast_store.apply(paths)
    raw = read_raw(paths.raw, catalogue.ids, tables=("customers", "holdings", "interactions"))
    derived = churn_labels(raw["customers"], raw["holdings"], raw["interactions"], catalogue.ids, 3)
    # The extract of the month with the most churners: with a random split, the test part keeps a few of them.
    month = derived.groupby(EVENT_TIMESTAMP)["label_churn"].sum().idxmax()
    extract = derived[derived[EVENT_TIMESTAMP] == month]
    assert extract["label_churn"].sum() >= 80, "the bank should have churners that month"
    table = pd.DataFrame({"customer_id": extract[CUSTOMER_ID],
                          # a mid-month extract: it learns from the month end before it
                          "snapshot_date": (extract[EVENT_TIMESTAMP].dt.tz_localize(None)
                                            + pd.Timedelta(days=12)).dt.strftime("%Y-%m-%d"),
                          "label": np.where(extract["label_churn"] == 1, "yes", "no")})
    table = pd.concat([table, pd.DataFrame({"customer_id": ["NOT_A_CUSTOMER"], "snapshot_date": ["2026-01-15"],
                                            "label": ["no"]})])
    path = tmp_path / "churn_labels.csv"
    table.to_csv(path, index=False)

    said = []
    cfg = TrainConfig(**FAST, label=ChurnLabel(definition="table", table=path))
    result = train_model(paths, "churn", cfg, on_stage=said.append)

    assert any(line.startswith("WARNING: the labels span 1 snapshot(s)") and "split at random" in line
               for line in said), said
    assert any("1 of " in line and "name customers not in raw/customers.parquet: left out" in line for line in said)
    assert result.promoted and registry.alias_version(paths, "churn") == result.version
    assert {"labels", "training set", "model inputs", "networks", "evaluation", "MLflow logging and registry",
            "LightGBM baseline"} <= set(result.stage_seconds)
    assert all(v >= 0 for v in result.stage_seconds.values())
    stages = sum(v for k, v in result.stage_seconds.items() if k != "LightGBM baseline")  # within evaluation
    assert result.stage_seconds["LightGBM baseline"] <= result.stage_seconds["evaluation"]
    assert stages == pytest.approx(result.seconds, abs=1.0)
    assert set(result.months["test"]) == {pd.Timestamp(month).strftime("%Y-%m-%d")}
    assert sum(result.rows.values()) == len(extract)
    assert 0.5 < result.metrics["test_roc_auc"] <= 1.0, (result.metrics["test_roc_auc"], extract["label_churn"].sum())
    run = mlflow.MlflowClient(registry.tracking(paths).get_tracking_uri()).get_run(result.run_id)
    assert run.data.tags["split"] == "random" and run.data.params["split"] == "random"
    assert run.data.metrics["seconds_networks"] == result.stage_seconds["networks"]
