"""The LightGBM model family beside the network: trained, logged, registered and scored without pickles,
and `family: auto`, where the better of the two on the held-out month goes to the promotion gate."""

from __future__ import annotations

import shutil

import mlflow
import numpy as np
import pytest

from nextbest.artifact import load_scorer
from nextbest.config import TrainConfig
from nextbest.feature_repo import store as feast_store
from nextbest.settings import Paths
from nextbest.training import evaluate as ev
from nextbest.training import registry
from nextbest.training.models import from_checkpoint, predict_proba
from nextbest.training.pipeline import prepare, train_model
from nextbest.trees import TreeScorer

FAST = dict(hidden=[32], max_epochs=3, patience=2, batch_size=256, ensemble=1, min_positives=3, baselines=True)


@pytest.fixture(scope="module")
def paths(feast_bank, tmp_path_factory):
    paths = Paths.from_workdir(tmp_path_factory.mktemp("families") / "work").ensure()
    for folder in ("raw", "features", "truth"):
        shutil.copytree(feast_bank.root / folder, paths.root / folder, dirs_exist_ok=True)
    feast_store.apply(paths)
    feast_store.materialize(paths)
    return paths


def test_the_lightgbm_family_is_registered_and_scores_without_pickles(paths):
    cfg = TrainConfig(**FAST, family="lightgbm")
    said = []
    result = train_model(paths, "nbp", cfg, on_stage=said.append)
    assert result.family == "lightgbm" and result.promoted
    assert any(line.startswith("LightGBM model (training nbp") for line in said)
    # The family is the LightGBM baseline's own model, so the evaluation takes its scores as the baseline's
    # instead of fitting it again.
    assert result.metrics["test_map_at_7"] == pytest.approx(result.metrics["lightgbm_map_at_7"], rel=1e-9)
    local = registry.fetch_version(paths, "nbp", result.version).local_dir
    files = {p.name for p in local.iterdir()}
    assert "trees.json" in files and any(f.startswith("tree_") and f.endswith(".txt") for f in files)
    assert not files & {"weights.pt", "weights.npz"}
    assert not any(f.endswith((".pkl", ".pickle", ".joblib")) for f in files)
    run = mlflow.MlflowClient(registry.tracking(paths).get_tracking_uri()).get_run(result.run_id)
    assert run.data.params["family"] == "lightgbm" and run.data.tags["family"] == "lightgbm"

    scorer, meta = load_scorer(local)
    assert isinstance(scorer, TreeScorer) and meta.family == "lightgbm" and len(scorer.outputs) == len(meta.outputs)
    prep = prepare(paths, "nbp", cfg)
    split = prep.split
    model, _ = from_checkpoint(local)
    # ... which it is: the baseline fitted on its own scores the test month alike.
    x_tr, x_va, x_te, cats = ev.lightgbm_inputs(split.train, split.val, split.test, prep.numeric, prep.categorical)
    labels = [f"label_{p}" for p in prep.products]
    baseline = ev.lightgbm_nbp(x_tr, split.train[labels].to_numpy(float), prep.mask(split.train), x_va,
                               split.val[labels].to_numpy(float), prep.mask(split.val), x_te, cats, seed=cfg.seed)
    np.testing.assert_allclose(predict_proba(model, meta, split.test), baseline, rtol=1e-6, atol=1e-9)
    test = split.test.head(20)
    batch = predict_proba(model, meta, test)
    rows = np.stack([scorer.predict_row(r) for r in test.to_dict(orient="records")])
    np.testing.assert_allclose(rows, batch, rtol=1e-6)
    assert ((batch >= 0) & (batch <= 1)).all() and batch.std() > 0


def test_auto_registers_both_families_and_gates_the_better(paths):
    cfg = TrainConfig(**FAST, family="auto")
    result = train_model(paths, "churn", cfg)
    assert set(result.families) == {"network", "lightgbm"}
    best = max(result.families, key=result.families.get)
    assert result.family == best
    assert result.metrics["test_roc_auc"] == pytest.approx(result.families[best])
    client = mlflow.MlflowClient(registry.tracking(paths).get_tracking_uri())
    versions = {str(v.version): v for v in client.search_model_versions("name='churn'")}
    assert len(versions) == 2
    other = next(v for k, v in versions.items() if k != str(result.version))
    assert other.tags["gate"].startswith(f"not a candidate: {best} v{result.version}")
    assert versions[str(result.version)].tags["gate"].startswith(f"{best} v{result.version} beat")
    assert result.promoted and registry.alias_version(paths, "churn") == result.version
    assert registry.alias_version(paths, "churn", registry.CHALLENGER_ALIAS) == result.version
    _, meta = from_checkpoint(registry.fetch_version(paths, "churn", result.version).local_dir)
    assert meta.family == best


def test_several_processes_are_for_the_network_family(paths):
    from nextbest.training.train import World

    with pytest.raises(ValueError, match="several processes is for the network family"):
        train_model(paths, "churn", TrainConfig(**FAST, family="lightgbm"), world=World(rank=0, size=2))


def test_a_lightgbm_champion_serves(paths):
    from tests.servers import latest_customers, loaded_engine

    engine = loaded_engine(paths.root)
    try:
        assert isinstance(engine.nbp.scorer, TreeScorer)
        answers = [engine.recommend(c, "web", 3) for c in latest_customers(paths.root)[:30]]
        offered = [o for a in answers for o in a["offers"]]
        assert offered and all(0 <= o["probability"] <= 1 for o in offered)
        features, _ = engine.online_features(latest_customers(paths.root)[0])
        np.testing.assert_allclose(engine.nbp.predict(features), engine.nbp.scorer.predict_proba(
            {k: [v] for k, v in features.items()})[0], rtol=1e-6)
    finally:
        engine.eventlog.close()
