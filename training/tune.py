"""Hyper-parameter search with Optuna: TPE sampler, median pruner on the validation metric per
epoch, every trial a nested MLflow run, the study stored in the work directory (resumable),
and the best parameters written to a config file the next `train` can use."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from nextbest.config import TrainConfig
from nextbest.settings import Paths
from nextbest.training import registry
from nextbest.training.models import ModelMeta, Preprocessor
from nextbest.training.pipeline import Prepared, prepare
from nextbest.training.train import fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneResult:
    study_name: str
    storage: str
    n_trials: int  # trials in the study, earlier sessions included
    n_pruned: int
    best_value: float
    best_params: dict
    config_path: Path
    parent_run_id: str


def storage_uri(paths: Paths) -> str:
    (paths.root / "optuna").mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{paths.root / 'optuna' / 'studies.db'}"


def suggest(trial, base: TrainConfig) -> TrainConfig:
    """The search space around the base config."""
    width = trial.suggest_categorical("width", [32, 64, 128, 256])
    depth = trial.suggest_int("depth", 1, 3)
    return base.model_copy(update={
        "hidden": [max(16, width // (2 ** i)) for i in range(depth)],
        "lr": trial.suggest_float("lr", 3e-4, 1e-2, log=True),
        "dropout": trial.suggest_float("dropout", 0.0, 0.4),
        "weight_decay": trial.suggest_float("weight_decay", 1e-7, 1e-3, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [256, 512, 1024, 2048]),
        "embedding_dim": trial.suggest_int("embedding_dim", 2, 8),
    })


def _objective_fn(prep: Prepared, base: TrainConfig, parent_run_id: str, experiment: str, mlflow):
    import optuna

    service = prep.service
    pre = Preprocessor.fit(prep.split.train, prep.numeric, prep.categorical, base.numeric_encoding, base.piecewise_bins)
    train_data, val_data = prep.task_data(prep.split.train, pre), prep.task_data(prep.split.val, pre)
    outputs = prep.products if prep.task == "nbp" else ["churn"]

    def objective(trial: optuna.Trial) -> float:
        cfg = suggest(trial, base)
        meta = ModelMeta(task=prep.task, feature_service=service, preprocessor=pre, outputs=outputs,
                         hidden=list(cfg.hidden), embedding_dim=cfg.embedding_dim, dropout=cfg.dropout)
        with mlflow.start_run(experiment_id=experiment, run_name=f"trial-{trial.number}", nested=True,
                              parent_run_id=parent_run_id):
            mlflow.log_params({**trial.params, "hidden": ",".join(map(str, cfg.hidden)), "trial": trial.number})

            def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
                trial.report(metrics["val_metric"], epoch)
                if trial.should_prune():
                    mlflow.set_tag("pruned_at_epoch", epoch)
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")

            result = fit(prep.task, meta, train_data, val_data, cfg, on_epoch=on_epoch)
            mlflow.log_metrics({"val_metric": result.best_val, "best_epoch": result.best_epoch})
        return result.best_val

    return objective


def tune(paths: Paths, task: str, n_trials: int, base: TrainConfig,
         on_trial: Callable[[int, float | None, str], None] | None = None,
         on_stage: Callable[[str], None] | None = None) -> TuneResult:
    """Runs `n_trials` more trials of the task's study (created or resumed) and writes the best config.

    Returns:
        The study's state after these trials; `config_path` holds the best parameters as a full
        `TrainConfig` YAML for `nextbest train <task> --config <path>`.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stage = on_stage or log.info
    prep = prepare(paths, task, base, stage)
    storage = storage_uri(paths)
    study = optuna.create_study(
        study_name=f"{task}", storage=storage, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=base.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2))
    mlflow = registry.tracking(paths)
    experiment = registry.experiment_id(paths, f"{task}-tuning")
    stage(f"{n_trials} trial(s); study '{task}' has {len(study.trials)} already")
    with mlflow.start_run(experiment_id=experiment, run_name=f"tune-{task}") as parent:
        mlflow.log_params({"n_trials": n_trials, "sampler": "TPE", "pruner": "median", "study": task})
        objective = _objective_fn(prep, base, parent.info.run_id, experiment, mlflow)

        def callback(study_, trial) -> None:
            if on_trial:
                on_trial(trial.number, trial.value, trial.state.name)

        study.optimize(objective, n_trials=n_trials, callbacks=[callback], gc_after_trial=True)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            raise RuntimeError("no trial completed; run more trials")
        best = study.best_trial
        best_cfg = suggest(optuna.trial.FixedTrial(best.params), base)
        mlflow.log_metrics({"best_val_metric": best.value, "n_trials_total": len(study.trials)})
        mlflow.log_params({f"best_{k}": v for k, v in best.params.items()})
        config_path = write_config(paths, task, best_cfg, best.value, best.number)
        mlflow.log_artifact(str(config_path))
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    return TuneResult(task, storage, len(study.trials), pruned, best.value, best.params, config_path,
                      parent.info.run_id)


def write_config(paths: Paths, task: str, cfg: TrainConfig, value: float, trial: int) -> Path:
    """Writes `<workdir>/configs/<task>.tuned.yaml` atomically."""
    target = paths.root / "configs" / f"{task}.tuned.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    header = f"# Best of Optuna study '{task}': trial {trial}, validation metric {value:.5f}\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(header + yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    os.replace(tmp, target)
    return target
