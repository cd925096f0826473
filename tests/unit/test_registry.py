"""The promotion gate and the registry's promote/rollback on a real MLflow SQLite backend."""

from __future__ import annotations

import pytest

from nextbest.settings import Paths
from training import registry
from training.pipeline import gate


def test_gate_promotes_only_a_better_challenger():
    assert gate(0.30, None, 0.01, "no champion yet")[0] is True
    assert gate(0.30, 0.25, 0.01, "")[0] is True
    promoted, reason = gate(0.255, 0.25, 0.01, "")
    assert promoted is False and "not promoted" in reason
    assert gate(0.20, 0.25, 0.0, "")[0] is False
    promoted, reason = gate(0.9, None, 0.0, "champion v1 needs features the current training set lacks: ['x']")
    assert promoted is False and "lacks" in reason


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
