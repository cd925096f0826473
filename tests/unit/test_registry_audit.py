"""The champion's history is an audit trail: complete, ordered, ISO times, who and why; a promotion
of the champion itself is a no-op that says so and records nothing."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from nextbest.cli import app
from nextbest.settings import Paths
from nextbest.training import registry


@pytest.fixture
def paths(tmp_path, monkeypatch):
    monkeypatch.delenv("NEXTBEST_MLFLOW_URI", raising=False)
    monkeypatch.delenv("NEXTBEST_PROJECT", raising=False)
    monkeypatch.setenv("NEXTBEST_ACTOR", "risk-officer")
    p = Paths(tmp_path / "wd").ensure()
    mlflow = registry.tracking(p)
    exp = registry.experiment_id(p, "audit")
    for _ in range(3):
        with mlflow.start_run(experiment_id=exp) as run:
            mlflow.log_text("{}", "model/model.json")
        registry.register(p, "nbp", run.info.run_id)
    return p


def test_history_is_complete_ordered_and_rollback_undoes_the_latest_promotion(paths):
    assert registry.promote(paths, "nbp", "1", "first") is None
    assert registry.promote(paths, "nbp", "1", "again") == "1"  # a no-op
    assert registry.promote(paths, "nbp", "2", "better") == "1"
    assert registry.promote(paths, "nbp", "3", "best") == "2"
    assert registry.rollback(paths, "nbp", "v3 misbehaves") == "2"
    assert registry.rollback(paths, "nbp") == "1"
    with pytest.raises(LookupError, match="no earlier champion"):
        registry.rollback(paths, "nbp")
    assert registry.alias_version(paths, "nbp") == "1"
    history = registry.champion_history(paths, "nbp")
    assert [(e["action"], e["version"], e["previous"]) for e in history] == [
        ("promote", "1", None), ("promote", "2", "1"), ("promote", "3", "2"),
        ("rollback", "2", "3"), ("rollback", "1", "2")]
    assert [e["reason"] for e in history][3] == "v3 misbehaves"
    assert all(e["by"] == "risk-officer" for e in history)
    times = [e["at"] for e in history]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", t) for t in times) and times == sorted(times)
    client = registry.tracking(paths).MlflowClient()
    assert client.get_model_version("nbp", "1").tags.get("rolled_back") is None  # the champion is not marked
    assert client.get_model_version("nbp", "3").tags.get("rolled_back") == "true"


def test_the_cli_says_when_a_promotion_changes_nothing(paths):
    registry.promote(paths, "nbp", "1", "first")
    result = CliRunner().invoke(app, ["registry", "promote", "nbp", "--version", "1", "--workdir", str(paths.root)])
    assert result.exit_code == 0 and "already champion; nothing changed" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["registry", "history", "nbp", "--workdir", str(paths.root)])
    assert result.exit_code == 0 and result.output.count("promote") == 1 and "risk-officer" in result.output


def _flip(path, n=64):
    data = bytearray(path.read_bytes())
    for i in range(n):
        data[(i * 7919) % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_corrupted_cached_model_is_fetched_again_and_a_corrupted_registry_refused(paths, tmp_path):
    mlflow = registry.tracking(paths)
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "model.json").write_text('{"task": "nbp"}')
    (checkpoint / "weights.npz").write_bytes(bytes(range(256)) * 64)
    with mlflow.start_run(experiment_id=registry.experiment_id(paths, "audit")) as run:
        mlflow.log_artifacts(str(checkpoint), "model")
    version = registry.register(paths, "nbp", run.info.run_id)
    model = registry.fetch_version(paths, "nbp", version)
    assert model.sha256 == registry.file_digests(checkpoint)
    _flip(model.local_dir / "weights.npz")
    again = registry.fetch_version(paths, "nbp", version)
    assert registry.file_digests(again.local_dir) == registry.file_digests(checkpoint)
    # The registry's own copy corrupted: nothing trustworthy to load.
    stored = next((paths.mlflow_artifacts / "audit").rglob("weights.npz"))
    _flip(stored)
    _flip(again.local_dir / "weights.npz")
    with pytest.raises(ValueError, match=r"\['weights.npz'\] do not match the SHA-256"):
        registry.fetch_version(paths, "nbp", version)
