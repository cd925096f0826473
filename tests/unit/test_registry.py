"""The promotion gate and the registry's promote/rollback on a real MLflow SQLite backend."""

from __future__ import annotations

import pytest

from nextbest.settings import Paths
from nextbest.training import registry
from nextbest.training.promotion import gate


def test_gate_promotes_only_a_better_challenger():
    assert gate(0.30, None, 0.01, "no champion yet")[0] is True
    assert gate(0.30, 0.25, 0.01, "")[0] is True
    promoted, reason = gate(0.255, 0.25, 0.01, "")
    assert promoted is False and "not promoted" in reason
    assert gate(0.20, 0.25, 0.0, "")[0] is False
    promoted, reason = gate(0.9, None, 0.0, "champion v1 needs features the current training set lacks: ['x']")
    assert promoted is False and "lacks" in reason


def test_gate_never_promotes_a_challenger_it_cannot_measure():
    for metric in (float("nan"), None, float("inf")):
        promoted, reason = gate(metric, None, 0.0, "no champion yet")
        assert promoted is False and "not measurable" in reason
        assert gate(metric, 0.5, 0.0, "")[0] is False


@pytest.fixture()
def paths(tmp_path):
    return Paths.from_workdir(tmp_path).ensure()


def _logged_version(paths: Paths, name: str, value: str) -> str:
    mlflow = registry.tracking(paths)
    with mlflow.start_run(experiment_id=registry.experiment_id(paths, name)) as run:
        model_dir = paths.root / f"ckpt-{value}"
        model_dir.mkdir()
        (model_dir / "model.json").write_text(f'{{"v": "{value}"}}')
        (model_dir / "weights.pt").write_bytes(b"w")
        mlflow.log_artifacts(str(model_dir), artifact_path=registry.MODEL_ARTIFACT_PATH)
    return registry.register(paths, name, run.info.run_id)


def test_register_promote_rollback_and_fetch(paths):
    v1 = _logged_version(paths, "nbp", "one")
    assert registry.alias_version(paths, "nbp") is None
    assert registry.alias_version(paths, "nbp", registry.CHALLENGER_ALIAS) == v1
    assert registry.promote(paths, "nbp", v1, "first") is None
    v2 = _logged_version(paths, "nbp", "two")
    assert registry.alias_version(paths, "nbp") == v1  # a new version does not replace the champion by itself
    assert registry.promote(paths, "nbp", v2, "better") == v1
    fetched = registry.fetch_alias(paths, "nbp")
    assert fetched.version == v2 and (fetched.local_dir / "model.json").read_text() == '{"v": "two"}'
    assert registry.rollback(paths, "nbp") == v1
    assert registry.fetch_alias(paths, "nbp").version == v1
    with pytest.raises(LookupError, match="no earlier champion"):
        registry.rollback(paths, "nbp")
    with pytest.raises(LookupError, match="has no version '9'"):
        registry.promote(paths, "nbp", "9", "typo")
    with pytest.raises(LookupError, match="no model 'churn'"):
        registry.fetch_alias(paths, "churn")


def test_gate_promotes_over_a_champion_trained_on_another_catalogue():
    promoted, reason = gate(0.1, None, 0.5, "champion v3 was trained on another product catalogue (products.yaml "
                                            "adds ['gold_card'], removes []); retrain after a catalogue change")
    assert promoted is True and "gold_card" in reason and reason.startswith("promoted")


def test_a_model_knows_the_catalogue_it_was_trained_on():
    from nextbest.training.models import ModelMeta, Preprocessor

    nbp = ModelMeta("nbp", "next_best_product_v1", Preprocessor(["age", "held_mortgage"], []),
                    ["mortgage", "e_account"], [8], 2, 0.0)
    assert nbp.catalogue_change(["mortgage", "e_account"]) is None
    assert "adds ['gold_card'], removes ['e_account']" in nbp.catalogue_change(["mortgage", "gold_card"])
    churn = ModelMeta("churn", "churn_v2", Preprocessor(["held_mortgage", "held_lag1_e_account", "held_e_account"],
                                                        []), ["churn"], [8], 2, 0.0)
    assert churn.products() == ["mortgage", "e_account"] and churn.catalogue_change(["e_account", "mortgage"]) is None
    assert "removes ['mortgage']" in churn.catalogue_change(["e_account"])
