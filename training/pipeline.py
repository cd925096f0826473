"""Train and evaluate one model end to end: labels -> Feast training set -> PyTorch -> side-by-side
evaluation -> MLflow run -> registry (challenger, promotion gate: `training.promotion`).

This is the I/O edge of `training/`: it reads the work directory, calls the pure pieces and
writes to MLflow. The CLI and quickstart call `train_model` and `evaluate_registered`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.config import TrainConfig, load_catalogue
from nextbest.constants import (CHURN_FEATURE_SERVICE, CHURN_MODEL_NAME, CUSTOMER_ID, EVENT_TIMESTAMP,
                                NBP_FEATURE_SERVICE, NBP_MODEL_NAME)
from nextbest.features.build import CATEGORICAL_FEATURES, POLICY_FEATURES
from nextbest.settings import Paths
from nextbest.training import evaluate as ev
from nextbest.training import registry
from nextbest.training.datasets import (RANDOM_SHARES, Split, check_labels, grid_nbp_labels, label_columns,
                                        sample_split, target_mask, training_split)
from nextbest.training.grid import read_grid
from nextbest.training.label_table import churn_entity
from nextbest.training.models import (ModelMeta, Preprocessor, from_checkpoint, predict_proba,
                                      save_checkpoint)
from nextbest.training.promotion import champion_metric, gate
from nextbest.training.evaluation import Evaluation, evaluate, log_evaluation
from nextbest.training.timing import StageClock, slug
from nextbest.training.train import (TaskData, World, churn_task, effective_batch_size, fit_ensemble, fit_temperature,
                                     nbp_task, predict_logits)

log = logging.getLogger(__name__)

TASKS = {
    "nbp": (NBP_FEATURE_SERVICE, NBP_MODEL_NAME, "test_map_at_7"),
    "churn": (CHURN_FEATURE_SERVICE, CHURN_MODEL_NAME, "test_roc_auc"),
}
Stage = Callable[[str], None]


@dataclass
class Prepared:
    """A task's training set from Feast, split by time."""

    task: str
    products: list[str]
    df: pd.DataFrame
    split: Split
    numeric: list[str]
    categorical: list[str]
    truth: pd.DataFrame | None
    service: str = ""  # the feature service the training set came from
    labelled_rows: int = 0  # labelled rows before sampling (`datasets.sample_split`)

    @property
    def features(self) -> list[str]:
        return self.numeric + self.categorical

    @cached_property
    def data_hash(self) -> str:
        return data_hash(self.df)

    @cached_property
    def catalogue(self):
        """The product catalogue whose eligibility rules the nbp mask applies (read once)."""
        return load_catalogue()

    def mask(self, df: pd.DataFrame) -> np.ndarray:
        """nbp: the (row, product) pairs that may be predicted and ranked: not held, and eligible under
        the catalogue's rules, as serving ranks them (`datasets.target_mask`)."""
        return target_mask(df, self.products, self.catalogue)

    def task_data(self, df: pd.DataFrame, pre: Preprocessor) -> TaskData:
        """Model inputs, targets and mask of one split."""
        if self.task == "nbp":
            return nbp_task(df, pre, self.products, self.catalogue)
        return churn_task(df, pre)

    def save(self, directory: Path) -> None:
        """Writes the training set for other processes (parquet + JSON: nothing pickled)."""
        directory.mkdir(parents=True, exist_ok=True)
        self.df.to_parquet(directory / "frame.parquet")
        if self.truth is not None:
            self.truth.to_parquet(directory / "truth.parquet")
        (directory / "prepared.json").write_text(json.dumps(
            {"task": self.task, "products": self.products, "numeric": self.numeric, "categorical": self.categorical,
             "service": self.service, "labelled_rows": self.labelled_rows}))

    @classmethod
    def load(cls, directory: Path, cfg: TrainConfig) -> "Prepared":
        meta = json.loads((directory / "prepared.json").read_text())
        df = pd.read_parquet(directory / "frame.parquet")
        truth = pd.read_parquet(directory / "truth.parquet") if (directory / "truth.parquet").exists() else None
        return cls(meta["task"], meta["products"], df, training_split(df, cfg.val_months, cfg.test_months, cfg.seed),
                   meta["numeric"], meta["categorical"], truth, meta.get("service", TASKS[meta["task"]][0]),
                   meta.get("labelled_rows", len(df)))


@dataclass
class TrainResult:
    task: str
    run_id: str
    version: str
    metrics: dict[str, float]
    months: dict[str, list[str]]
    rows: dict[str, int]
    seconds: float
    promoted: bool
    promotion_reason: str
    history: list[dict[str, float]] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    family: str = "network"
    families: dict[str, float] = field(default_factory=dict)  # family -> gate metric on the test month (auto)


def training_frame(paths: Paths, entity_df: pd.DataFrame, feature_service: str) -> pd.DataFrame:
    """Point-in-time training set from Feast: the entity frame joined with the service's features, one
    group of customer parts at a time (`feature_repo.retrieval`), so memory follows the group."""
    from nextbest.feature_repo.retrieval import historical_features, in_time_order
    from nextbest.feature_repo.store import open_store

    return in_time_order(historical_features(open_store(paths), entity_df, feature_service))


def data_hash(df: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes()).hexdigest()[:16]


def prepare(paths: Paths, task: str, cfg: TrainConfig, stage: Stage = log.info, service: str | None = None) -> Prepared:
    """Labels from the holdings, features from Feast by FeatureService (default: the one the task trains on
    now, `feature_repo.versions.feature_service_for`), chronological split."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    from nextbest.feature_repo.versions import feature_service_for

    service = service or feature_service_for(paths, task)
    products = load_catalogue().ids
    stage("labels (from raw/holdings.parquet)" if task == "nbp" or cfg.label.definition != "table" else "labels")
    grid = read_grid(paths.raw, products)  # only the columns labels need, not the raw tables in full
    if task == "nbp":
        entity = grid_nbp_labels(grid, products)
    else:
        entity = churn_entity(grid, products, cfg, stage)  # as configs/churn.yaml defines churn
    del grid  # the holdings cube need not stay in memory while the features are joined
    # The labels are known before the features: a bank whose labels cannot train stops here.
    labelled = training_split(entity, cfg.val_months, cfg.test_months, cfg.seed)
    if labelled.kind == "random":
        stage(f"WARNING: the labels span {entity[EVENT_TIMESTAMP].nunique()} snapshot(s), fewer than the "
              f"{cfg.val_months + cfg.test_months + 1} a split by time needs: the customers are split at random "
              f"({1 - sum(RANDOM_SHARES):.0%} training, {RANDOM_SHARES[0]:.0%} validation, "
              f"{RANDOM_SHARES[1]:.0%} test, stratified by label), so the test figures say how the model ranks "
              "other customers of the same months, not how it will do on a later month (MLflow: split = random)")
    check_labels(labelled, task, cfg.min_positives, cfg.label.definition if task == "churn" else None)
    sample = sample_split(labelled, cfg.max_train_rows, cfg.max_eval_rows, cfg.seed)
    drawn = ""
    if sample.sampled:
        drawn = ", drawn at random from " + ", ".join(
            f"{sample.labelled[k]:,} {k}" for k in sample.labelled) + " (max_train_rows, max_eval_rows)"
    stage(f"training set (from Feast: {service}, {len(sample.entity):,} rows{drawn})")
    df = training_frame(paths, sample.entity, service)
    split = training_split(df, cfg.val_months, cfg.test_months, cfg.seed)
    labels = label_columns(df)
    features = [c for c in df.columns if c not in (CUSTOMER_ID, EVENT_TIMESTAMP, *labels, *POLICY_FEATURES)]
    # The built categorical features, and any text column (the bank's own categorical features).
    categorical = [c for c in features if c in CATEGORICAL_FEATURES or not pd.api.types.is_numeric_dtype(df[c])]
    numeric = [c for c in features if c not in categorical]
    truth = ev.load_truth(paths.truth, "acquisition" if task == "nbp" else "churn")
    return Prepared(task, products, df, split, numeric, categorical, truth, service, sum(sample.labelled.values()))


def _signature(meta: ModelMeta, example: pd.DataFrame, prob: np.ndarray) -> dict:
    from mlflow.models import infer_signature

    inputs = example[meta.preprocessor.numeric + meta.preprocessor.categorical].head(5)
    return infer_signature(inputs, pd.DataFrame(prob[:5], columns=meta.outputs)).to_dict()


@dataclass
class Fitted:
    """One trained model of a family, before evaluation."""

    family: str
    model: object
    meta: ModelMeta
    best_val: float = float("nan")
    history: list[dict[str, float]] = field(default_factory=list)
    batch_size: int | None = None


def fit_family(prep: Prepared, cfg: TrainConfig, family: str, stage: Stage,
               on_epoch: Callable[[int, dict[str, float]], None] | None = None,
               world: World | None = None) -> Fitted | None:
    """Fits one model family (`network`: the PyTorch network or ensemble; `lightgbm`: `training.trees`) on the
    training months, early-stopped on the validation month; None on a torchrun process other than rank 0."""
    split, task = prep.split, prep.task
    stage("model inputs")
    pre = Preprocessor.fit(split.train, prep.numeric, prep.categorical, cfg.numeric_encoding, cfg.piecewise_bins)
    meta = ModelMeta(task=task, feature_service=prep.service, preprocessor=pre,
                     outputs=prep.products if task == "nbp" else ["churn"], hidden=list(cfg.hidden),
                     embedding_dim=cfg.embedding_dim, dropout=cfg.dropout, members=cfg.ensemble, family=family)
    rows = f"{len(split.train):,} train / {len(split.val):,} val / {len(split.test):,} test rows"
    if family == "lightgbm":
        from nextbest.training.trees import fit_trees

        stage(f"LightGBM model (training {task}: {rows})")
        meta.members, meta.extra = 1, {"split_months": split.months, "seed": cfg.seed}
        return Fitted(family, fit_trees(prep, pre, meta, cfg), meta)
    train_data, val_data = prep.task_data(split.train, pre), prep.task_data(split.val, pre)
    stage(f"networks (training {task}: {rows})")
    result = fit_ensemble(task, meta, train_data, val_data, cfg, on_epoch=on_epoch, world=world)
    if world is not None and world.rank != 0:
        return None
    meta.temperature = fit_temperature(predict_logits(result.model, val_data), val_data.y, val_data.mask)
    meta.extra = {"split_months": split.months, "best_epoch": result.best_epoch}
    if result.member_epochs:
        meta.extra["member_best_epochs"] = result.member_epochs
    return Fitted(family, result.model, meta, result.best_val, result.history,
                  effective_batch_size(cfg, len(train_data)))


def train_model(paths: Paths, task: str, cfg: TrainConfig,
                on_epoch: Callable[[int, dict[str, float]], None] | None = None,
                on_stage: Stage | None = None, prepared: Prepared | None = None,
                world: World | None = None) -> TrainResult | None:
    """Trains, evaluates beside the baselines, logs to MLflow, registers the version as
    `challenger`, and promotes it to `champion` if it passes the gate.

    With `family: auto` both families are trained, evaluated and registered; the better on the test
    month goes to the gate, and the result is its. Under torchrun (`world` set, network family) every
    process trains; only rank 0 evaluates, logs and registers, the others return None.
    """
    stage = StageClock(on_stage or log.info)
    started = time.perf_counter()
    _, model_name, gate_metric = TASKS[task]
    families = ["network", "lightgbm"] if cfg.family == "auto" else [cfg.family]
    if world is not None and families != ["network"]:
        raise ValueError(f"training on several processes is for the network family, not family: {cfg.family}")
    prep = prepared or prepare(paths, task, cfg, stage)
    runs, champion = [], None
    shared, before = stage.seconds(), stage.seconds()  # the labels and training set serve every family
    for family in families:
        fitted = fit_family(prep, cfg, family, stage, on_epoch, world)
        if fitted is None:
            return None
        # Only the process that registers reads the registry (under torchrun, rank 0).
        champion = champion or champion_metric(paths, prep, model_name)
        _, champion_score, why = champion
        stage("evaluation (beside popularity, LightGBM and the oracle)" if cfg.baselines else "evaluation")
        evaluation = evaluate(prep, fitted.model, fitted.meta, cfg, baselines=cfg.baselines, cache=paths.baselines,
                              fresh=True)
        evaluation.metrics["val_metric"] = fitted.best_val
        if champion_score is not None:
            evaluation.metrics[f"champion_{gate_metric}"] = champion_score
        stage("MLflow logging and registry")
        run_id, version = _log_and_register(paths, prep, cfg, fitted, evaluation)
        now_seconds = stage.seconds()  # this family's stages: what the clock added since the last family
        own = {k: round(v - before.get(k, 0.0), 2) for k, v in now_seconds.items() if v - before.get(k, 0.0) > 0}
        runs.append((fitted, evaluation, run_id, version, {**shared, **own, **evaluation.details.get("seconds", {})}))
        before = now_seconds
    score = [r[1].metrics[gate_metric] for r in runs]
    best = int(np.argmax([v if np.isfinite(v) else -np.inf for v in score]))
    fitted, evaluation, run_id, version, _ = runs[best]
    promoted, reason = gate(score[best], champion_score, cfg.promotion_margin, why)
    client = registry.tracking(paths).MlflowClient()
    if len(runs) > 1:
        other = runs[1 - best]
        reason = (f"{fitted.family} v{version} beat {other[0].family} v{other[3]} on the test month "
                  f"({gate_metric} {score[best]:.4f} against {score[1 - best]:.4f}); {reason}")
        client.set_model_version_tag(model_name, other[3], "gate", f"not a candidate: {fitted.family} v{version} "
                                     f"did better on the test month ({score[best]:.4f} against {score[1 - best]:.4f})")
        # Each registration moved `challenger`; it names the candidate.
        client.set_registered_model_alias(model_name, registry.CHALLENGER_ALIAS, version)
    if promoted:
        registry.promote(paths, model_name, version, reason)
    client.set_model_version_tag(model_name, version, "gate", reason)
    # Logged once every stage has ended (the LightGBM baseline is part of the evaluation's time).
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    for *_, rid, _, secs in runs:
        client.log_batch(rid, metrics=[Metric(f"seconds_{slug(k)}", v, now, 0) for k, v in secs.items()])
    seconds = {**stage.seconds(), **evaluation.details.get("seconds", {})}
    split = prep.split
    return TrainResult(task, run_id, version, evaluation.metrics, split.months,
                       {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
                       time.perf_counter() - started, promoted, reason, fitted.history, seconds, fitted.family,
                       {r[0].family: float(v) for r, v in zip(runs, score)})


def _log_and_register(paths: Paths, prep: Prepared, cfg: TrainConfig, fitted: Fitted,
                      evaluation: Evaluation) -> tuple[str, str]:
    """One MLflow run (parameters, per-epoch and test metrics, figures, the checkpoint) and its registered version."""
    from mlflow.entities import Metric

    split, task, service = prep.split, prep.task, prep.service
    mlflow = registry.tracking(paths)
    exp = registry.experiment_id(paths, task)
    with mlflow.start_run(experiment_id=exp, run_name=f"{task}-{fitted.family}-{time.strftime('%Y%m%d-%H%M%S')}") \
            as run:
        params = {**cfg.model_dump(exclude={"hidden"}), "hidden": ",".join(map(str, cfg.hidden)),
                  "family": fitted.family, "feature_service": service, "n_features": len(prep.features),
                  "train_rows": len(split.train), "labelled_rows": prep.labelled_rows, "split": split.kind,
                  "data_hash": prep.data_hash}
        if fitted.batch_size is not None:
            params["effective_batch_size"] = fitted.batch_size
        mlflow.log_params(params)
        mlflow.set_tags({"feature_service": service, "task": task, "test_month": ",".join(split.months["test"]),
                         "split": split.kind, "family": fitted.family})
        now = int(time.time() * 1000)
        epoch_metrics = [Metric(k, float(v), now, int(h["epoch"])) for h in fitted.history
                         for k, v in h.items() if k not in ("epoch", "member")]
        client = mlflow.MlflowClient()
        for i in range(0, len(epoch_metrics), 900):  # one call per batch, not one per epoch
            client.log_batch(run.info.run_id, metrics=epoch_metrics[i:i + 900])
        log_evaluation(mlflow, evaluation)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = save_checkpoint(Path(tmp) / registry.MODEL_ARTIFACT_PATH, fitted.model, fitted.meta)
            example_prob = predict_proba(fitted.model, fitted.meta, split.test.head(5))
            (ckpt / "signature.json").write_text(json.dumps(_signature(fitted.meta, split.test, example_prob)))
            mlflow.log_artifacts(str(ckpt), artifact_path=registry.MODEL_ARTIFACT_PATH)
        run_id = run.info.run_id
    return run_id, registry.register(paths, TASKS[task][1], run_id)


def evaluate_registered(paths: Paths, task: str, cfg: TrainConfig, version: str | None = None,
                        on_stage: Stage | None = None) -> tuple[str, Evaluation]:
    """Re-evaluates a registered version (default: the champion) on the latest test month beside
    the baselines and the oracle, and logs it as an evaluation run in MLflow."""
    stage = on_stage or log.info
    _, model_name, _ = TASKS[task]
    version = version or registry.alias_version(paths, model_name)
    if version is None:
        raise LookupError(f"no champion for '{model_name}': train one first (nextbest train {task})")
    model, meta = from_checkpoint(registry.fetch_version(paths, model_name, version).local_dir)
    prep = prepare(paths, task, cfg, stage, service=meta.feature_service)
    stage(f"evaluating {model_name} v{version} beside the baselines")
    evaluation = evaluate(prep, model, meta, cfg, baselines=cfg.baselines, cache=paths.baselines)
    mlflow = registry.tracking(paths)
    with mlflow.start_run(experiment_id=registry.experiment_id(paths, task), run_name=f"evaluate-{task}-v{version}"):
        mlflow.set_tags({"evaluation_of": f"{model_name}/{version}", "test_month": ",".join(prep.split.months["test"])})
        log_evaluation(mlflow, evaluation)
    return version, evaluation
