"""Training, the promotion gate and Optuna tuning on a small bank served by Feast."""

from __future__ import annotations

import mlflow
import pytest

from nextbest.config import TrainConfig, load_train_config
from nextbest.training import registry
from nextbest.training.pipeline import prepare, train_model
from nextbest.training.tune import tune

FAST = dict(hidden=[32], max_epochs=3, patience=2, batch_size=256)


def test_train_registers_challenger_and_gate_blocks_a_worse_model(feast_bank):
    cfg = TrainConfig(**FAST, baselines=False)
    prep = prepare(feast_bank, "nbp", cfg)
    first = train_model(feast_bank, "nbp", cfg, prepared=prep)
    assert first.promoted and registry.alias_version(feast_bank, "nbp") == first.version
    # The champion is re-scored on the challenger's test month: same month, same model, same number.
    second = train_model(feast_bank, "nbp", cfg.model_copy(update={"lr": 1e-9, "max_epochs": 1, "seed": 5}),
                         prepared=prep)
    assert second.metrics["champion_test_map_at_7"] == pytest.approx(first.metrics["test_map_at_7"])
    better = second.metrics["test_map_at_7"] >= first.metrics["test_map_at_7"]
    assert second.promoted == better
    assert registry.alias_version(feast_bank, "nbp") == (second.version if better else first.version)
    assert registry.alias_version(feast_bank, "nbp", registry.CHALLENGER_ALIAS) == second.version
    # With a margin no model can clear, a challenger is never promoted, however good.
    champion = registry.alias_version(feast_bank, "nbp")
    strict = train_model(feast_bank, "nbp", cfg.model_copy(update={"promotion_margin": 1.0}), prepared=prep)
    assert not strict.promoted and "not promoted" in strict.promotion_reason
    assert registry.alias_version(feast_bank, "nbp") == champion


def test_tune_runs_nested_trials_resumes_and_writes_a_usable_config(feast_bank):
    base = TrainConfig(**FAST)
    first = tune(feast_bank, "churn", 3, base)
    assert first.n_trials == 3 and first.config_path.exists()
    again = tune(feast_bank, "churn", 2, base)
    assert again.n_trials == 5  # resumed, not restarted
    cfg = load_train_config("churn", again.config_path)
    assert cfg.lr == pytest.approx(again.best_params["lr"]) and cfg.max_epochs == FAST["max_epochs"]
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("churn-tuning")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 5 and len(runs) == 7  # two parent runs, five nested trials


def test_a_large_bank_trains_on_a_reproducible_sample_and_mlflow_says_so(feast_bank):
    whole = prepare(feast_bank, "nbp", TrainConfig(**FAST, max_train_rows=None, max_eval_rows=None))
    cfg = TrainConfig(**FAST, baselines=False, max_train_rows=600, max_eval_rows=150)
    lines: list[str] = []
    prep = prepare(feast_bank, "nbp", cfg, lines.append)
    assert (len(prep.split.train), len(prep.split.val), len(prep.split.test)) == (600, 150, 150)
    assert prep.labelled_rows == len(whole.df) > 900
    assert prep.split.months == whole.split.months  # every month of each window is still drawn from
    assert any("drawn at random from" in line and "max_train_rows" in line for line in lines)
    # The sample is the rows' own: the same rows, features and all, each time.
    assert prepare(feast_bank, "nbp", cfg).data_hash == prep.data_hash
    joined = whole.df.merge(prep.df[["customer_id", "event_timestamp"]], on=["customer_id", "event_timestamp"])
    assert len(joined) == len(prep.df)
    result = train_model(feast_bank, "nbp", cfg, prepared=prep)
    params = mlflow.MlflowClient().get_run(result.run_id).data.params
    assert params["train_rows"] == "600" and params["labelled_rows"] == str(len(whole.df))
    assert params["max_train_rows"] == "600" and params["max_eval_rows"] == "150"
