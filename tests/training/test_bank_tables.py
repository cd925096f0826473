"""The bank's own feature tables: imported, a Feast view and a new service version, trained on, served
online after materialisation, and covered by drift monitoring."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from nextbest.config import TrainConfig
from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP
from nextbest.feature_repo import store as feast_store
from nextbest.feature_repo.versions import feature_service_for, read_record
from nextbest.features.bank_tables import import_bank_tables
from nextbest.config import load_features_config
from nextbest.features.split import part_rows
from nextbest.settings import Paths
from nextbest.training import registry
from nextbest.training.models import from_checkpoint, predict_proba
from nextbest.training.pipeline import train_model, training_frame
from tests.servers import loaded_engine

FAST = dict(hidden=[32], max_epochs=20, patience=4, batch_size=256, ensemble=1, min_positives=3, baselines=False)


def _project(tmp_path, monkeypatch, tables_yaml: str):
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    (project / "nextbest.yaml").write_text("name: bank\nworkdir: work\n")
    (project / "configs" / "features.yaml").write_text(tables_yaml)
    monkeypatch.setenv("NEXTBEST_PROJECT", str(project))
    return project


def _risk_table(paths: Paths) -> pd.DataFrame:
    """A bank aggregate that knows who leaves: the simulator's true churn risk, with noise, as a score and a band."""
    truth = pd.read_parquet(paths.truth / "churn.parquet")
    rng = np.random.default_rng(3)
    score = np.log(truth["p_gone"].to_numpy() + 1e-4) + rng.normal(0, 0.3, len(truth))
    band = pd.cut(score, [-np.inf, -6, -4, np.inf], labels=["low", "mid", "high"]).astype(str)
    return pd.DataFrame({"customer_id": truth[CUSTOMER_ID], "month_end": truth["snapshot_date"],
                         "risk_score": np.round(score, 4), "risk_band": band, "ignored": 1})


@pytest.fixture
def bank_paths(feast_bank, tmp_path, monkeypatch):
    paths = Paths.from_workdir(tmp_path / "project" / "work").ensure()
    for folder in ("raw", "features", "truth"):
        shutil.copytree(feast_bank.root / folder, paths.root / folder, dirs_exist_ok=True)
    return paths


def test_a_bank_table_is_trained_on_served_online_and_monitored(bank_paths, tmp_path, monkeypatch):
    paths = bank_paths
    project = _project(tmp_path, monkeypatch, "tables: []\n")
    feast_store.apply(paths)
    cfg = TrainConfig(**FAST)
    assert feature_service_for(paths, "churn") == "churn_v2"

    data = project / "data"
    data.mkdir()
    table = _risk_table(paths)
    table = pd.concat([table, pd.DataFrame({"customer_id": ["STRANGER"], "month_end": ["2026-01-31"],
                                            "risk_score": [0.0], "risk_band": ["low"], "ignored": [0]})])
    table.to_csv(data / "risk.csv", index=False)
    (project / "configs" / "features.yaml").write_text(
        "tables:\n  - name: bank_risk\n    path: data/risk.csv\n    timestamp: month_end\n"
        "    columns: {risk_score: numeric, risk_band: categorical}\n    models: [churn]\n")
    reports = import_bank_tables(load_features_config(), paths.raw, paths.features, "features.yaml")
    assert reports[0].rows_kept == len(table) - 1
    assert reports[0].left_out["of customers not in raw/customers.parquet"] == 1
    written = pd.read_parquet(paths.features / "bank_risk.parquet")
    assert list(written.columns) == [CUSTOMER_ID, EVENT_TIMESTAMP, "risk_score", "risk_band"]
    # In the built views' customer parts, so that training sets join part by part.
    profile_parts = part_rows(paths.features / "customer_profile.parquet")
    assert len(part_rows(paths.features / "bank_risk.parquet")) == len(profile_parts)

    names = feast_store.apply(paths)
    assert "bank_risk" in names and "churn_bank_v1" in names and "churn_v2" in names
    assert feature_service_for(paths, "churn") == "churn_bank_v1"
    assert feature_service_for(paths, "nbp") == "next_best_product_v1"
    assert feast_store.apply(paths) == names, "re-applying the same tables adds no version"

    with_bank = train_model(paths, "churn", cfg)
    _, meta = from_checkpoint(registry.fetch_version(paths, "churn", with_bank.version).local_dir)
    assert meta.feature_service == "churn_bank_v1"
    assert "risk_score" in meta.preprocessor.numeric and "risk_band" in meta.preprocessor.categorical
    # The bank's score knows who leaves (its ROC AUC alone is about 0.77 on the test month): the network
    # must read it, and rank a customer as riskier when only the bank's score says so.
    model, _ = from_checkpoint(registry.fetch_version(paths, "churn", with_bank.version).local_dir)
    frame = training_frame(paths, written[[CUSTOMER_ID, EVENT_TIMESTAMP]].head(400),
                           meta.feature_service)
    low, high = np.quantile(written["risk_score"], [0.05, 0.95])
    p_low = predict_proba(model, meta, frame.assign(risk_score=low)).ravel()
    p_high = predict_proba(model, meta, frame.assign(risk_score=high)).ravel()
    assert (p_high > p_low).mean() > 0.9 and p_high.mean() > 1.5 * p_low.mean(), (p_low.mean(), p_high.mean())
    assert np.isfinite(with_bank.metrics["test_roc_auc"])

    # Online after materialize, through the version the champion names.
    feast_store.materialize(paths)
    store = feast_store.open_store(paths)
    service = store.get_feature_service(meta.feature_service)
    last = written[written[EVENT_TIMESTAMP] == written[EVENT_TIMESTAMP].max()].iloc[0]
    online = store.get_online_features(features=service, entity_rows=[{CUSTOMER_ID: last[CUSTOMER_ID]}]).to_dict()
    assert online["risk_score"][0] == pytest.approx(last["risk_score"], rel=1e-5)
    assert online["risk_band"][0] == last["risk_band"]

    # The decision engine reads what both champions need: nbp's service and the churn model's bank table.
    nbp = train_model(paths, "nbp", TrainConfig(**{**FAST, "max_epochs": 2}))
    assert nbp.promoted
    engine = loaded_engine(paths.root)
    try:
        features, degraded = engine.online_features(last[CUSTOMER_ID])
        assert degraded is None and features["risk_score"] == pytest.approx(last["risk_score"], rel=1e-5)
        assert features["risk_band"] == last["risk_band"] and "n_products" in features
        answer = engine.recommend(last[CUSTOMER_ID], "web", 3)
        assert answer["churn_risk"] == pytest.approx(
            float(predict_proba(model, meta, pd.DataFrame([features]))[0, 0]), rel=1e-4)
    finally:
        engine.eventlog.close()

    # A column more: a new version; the champion's stays applied.
    (project / "configs" / "features.yaml").write_text(
        "tables:\n  - name: bank_risk\n    path: data/risk.csv\n    timestamp: month_end\n"
        "    columns: {risk_score: numeric, risk_band: categorical, ignored: numeric}\n")
    import_bank_tables(load_features_config(), paths.raw, paths.features, "features.yaml")
    names = feast_store.apply(paths)
    assert {"churn_bank_v1", "churn_bank_v2", "next_best_product_bank_v1"} <= set(names)
    assert [v.name for v in read_record(paths).versions] == ["churn_bank_v1", "next_best_product_bank_v1",
                                                              "churn_bank_v2"]
    assert feast_store.open_store(paths).get_feature_service("churn_bank_v1").feature_view_projections[-1] \
        .features[0].name == "risk_score"

    # A declared column the file does not hold yet: apply says to import first, and records nothing.
    (project / "configs" / "features.yaml").write_text(
        "tables:\n  - name: bank_risk\n    path: data/risk.csv\n    timestamp: month_end\n"
        "    columns: {risk_score: numeric, risk_band: categorical, ignored: numeric, extra: numeric}\n")
    with pytest.raises(ValueError, match=r"bank_risk.parquet: column\(s\) \['extra'\] .* `nextbest features import`"):
        feast_store.apply(paths)
    assert feature_service_for(paths, "churn") == "churn_bank_v2"

    # A column dropped: the versions reading it can no longer be applied, leave the registry, and say why.
    (project / "configs" / "features.yaml").write_text(
        "tables:\n  - name: bank_risk\n    path: data/risk.csv\n    timestamp: month_end\n"
        "    columns: {risk_score: numeric, ignored: numeric}\n")
    import_bank_tables(load_features_config(), paths.raw, paths.features, "features.yaml")
    names = feast_store.apply(paths)
    unavailable = dict(read_record(paths).unavailable)
    assert set(unavailable) == {"churn_bank_v1", "churn_bank_v2", "next_best_product_bank_v1"}
    assert unavailable["churn_bank_v1"] == "bank_risk.risk_band is gone"
    registered = {s.name for s in feast_store.open_store(paths).list_feature_services()}
    assert "churn_bank_v1" not in registered and "churn_bank_v3" in registered and "churn_bank_v3" in names
    # The churn champion reads churn_bank_v1: `nextbest serve` says so before it starts.
    from nextbest.cli.common import StageError
    from nextbest.cli.server import free_port, preflight

    with pytest.raises(StageError, match=r"champion 'churn' v\d+ reads feature service churn_bank_v1, which is no "
                                         r"longer applied \(bank_risk.risk_band is gone\)"):
        preflight(paths, "127.0.0.1", free_port())

    from nextbest.monitoring.inputs import load_features

    features = load_features(paths)
    assert {"risk_score", "ignored"} <= set(features.columns)
    row = features[(features[CUSTOMER_ID] == last[CUSTOMER_ID])
                   & (features[EVENT_TIMESTAMP] == last[EVENT_TIMESTAMP])].iloc[0]
    assert row["risk_score"] == pytest.approx(last["risk_score"], rel=1e-5)
