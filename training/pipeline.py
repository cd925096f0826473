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
from nextbest.io import read_raw
from nextbest.settings import Paths
from nextbest.training import evaluate as ev
from nextbest.training import registry
from nextbest.training.datasets import (RANDOM_SHARES, Split, check_labels, label_columns, nbp_labels, target_mask,
                                        training_split)
from nextbest.training.label_table import churn_entity
from nextbest.training.models import (Ensemble, ModelMeta, Preprocessor, TabularNet, from_checkpoint, predict_proba,
                                      save_checkpoint)
from nextbest.training.promotion import champion_metric, gate
from nextbest.training.timing import StageClock, slug
from nextbest.training.train import (TaskData, World, churn_task, effective_batch_size, fit_ensemble, fit_temperature,
                                     nbp_task, predict_logits)

log = logging.getLogger(__name__)

TASKS = {
    "nbp": (NBP_FEATURE_SERVICE, NBP_MODEL_NAME, "test_map_at_7"),
    "churn": (CHURN_FEATURE_SERVICE, CHURN_MODEL_NAME, "test_roc_auc"),
}
SEGMENT_COLUMN = "relationship"
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
            {"task": self.task, "products": self.products, "numeric": self.numeric, "categorical": self.categorical}))

    @classmethod
    def load(cls, directory: Path, cfg: TrainConfig) -> "Prepared":
        meta = json.loads((directory / "prepared.json").read_text())
        df = pd.read_parquet(directory / "frame.parquet")
        truth = pd.read_parquet(directory / "truth.parquet") if (directory / "truth.parquet").exists() else None
        return cls(meta["task"], meta["products"], df, training_split(df, cfg.val_months, cfg.test_months, cfg.seed),
                   meta["numeric"], meta["categorical"], truth)


@dataclass
class Evaluation:
    metrics: dict[str, float]
    details: dict = field(default_factory=dict)  # JSON-able per-product / per-segment numbers
    figures: dict = field(default_factory=dict)  # file name -> matplotlib figure


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


def training_frame(paths: Paths, entity_df: pd.DataFrame, feature_service: str) -> pd.DataFrame:
    """Point-in-time training set from Feast: the entity frame joined with the service's features, one
    group of customer parts at a time (`feature_repo.retrieval`), so memory follows the group."""
    from nextbest.feature_repo.retrieval import historical_features, in_time_order
    from nextbest.feature_repo.store import open_store

    return in_time_order(historical_features(open_store(paths), entity_df, feature_service))


def data_hash(df: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes()).hexdigest()[:16]


def prepare(paths: Paths, task: str, cfg: TrainConfig, stage: Stage = log.info) -> Prepared:
    """Labels from the holdings, features from Feast by FeatureService, chronological split."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    service = TASKS[task][0]
    products = load_catalogue().ids
    stage("labels (from raw/holdings.parquet)" if task == "nbp" or cfg.label.definition != "table" else "labels")
    raw = read_raw(paths.raw, products, tables=("customers", "holdings", "interactions"))
    if task == "nbp":
        entity = nbp_labels(raw["customers"], raw["holdings"], raw["interactions"], products)
    else:
        entity = churn_entity(raw, products, cfg, stage)  # as configs/churn.yaml defines churn
    # The labels are known before the features: a bank whose labels cannot train stops here.
    labelled = training_split(entity, cfg.val_months, cfg.test_months, cfg.seed)
    if labelled.kind == "random":
        stage(f"WARNING: the labels span {entity[EVENT_TIMESTAMP].nunique()} snapshot(s), fewer than the "
              f"{cfg.val_months + cfg.test_months + 1} a split by time needs: the customers are split at random "
              f"({1 - sum(RANDOM_SHARES):.0%} training, {RANDOM_SHARES[0]:.0%} validation, "
              f"{RANDOM_SHARES[1]:.0%} test, stratified by label), so the test figures say how the model ranks "
              "other customers of the same months, not how it will do on a later month (MLflow: split = random)")
    check_labels(labelled, task, cfg.min_positives, cfg.label.definition if task == "churn" else None)
    stage(f"training set (from Feast: {service}, {len(entity):,} rows)")
    df = training_frame(paths, entity, service)
    split = training_split(df, cfg.val_months, cfg.test_months, cfg.seed)
    labels = label_columns(df)
    features = [c for c in df.columns if c not in (CUSTOMER_ID, EVENT_TIMESTAMP, *labels, *POLICY_FEATURES)]
    categorical = [c for c in CATEGORICAL_FEATURES if c in features]
    numeric = [c for c in features if c not in categorical]
    truth = ev.load_truth(paths.truth, "acquisition" if task == "nbp" else "churn")
    return Prepared(task, products, df, split, numeric, categorical, truth)


def evaluate(prep: Prepared, model: TabularNet | Ensemble, meta: ModelMeta, cfg: TrainConfig,
             baselines: bool = True, cache: Path | None = None) -> Evaluation:
    """The model beside the baselines and the oracle on the test month; LightGBM's test scores are kept
    in `cache` per training set and reused (`nextbest evaluate` does not refit it)."""
    prob = predict_proba(model, meta, prep.split.test)
    if prep.task == "nbp":
        return _evaluate_nbp(prep, prob, cfg, baselines, cache)
    return _evaluate_churn(prep, prob.ravel(), cfg, baselines, cache)


def _lightgbm(prep: Prepared, cfg: TrainConfig, cache: Path | None, fit: Callable[[], np.ndarray],
              seconds: dict[str, float]) -> np.ndarray:
    """`fit()`'s test scores, or those kept for the same training set, split, inputs and seed; `seconds`
    gets the time it took, under `LightGBM baseline`."""
    started = time.perf_counter()
    import lightgbm

    # Everything the baseline's scores depend on: the rows and their split, the inputs, the products and
    # their eligibility (the nbp masks), the seed and the LightGBM release.
    key = [prep.task, prep.data_hash, prep.split.kind, prep.split.months, prep.numeric, prep.categorical,
           prep.products, prep.catalogue.model_dump(mode="json") if prep.task == "nbp" else None, cfg.seed,
           lightgbm.__version__, ev.BASELINE_VERSION]
    scores = ev.cached_scores(cache, f"lightgbm-{prep.task}", key, fit)
    seconds["LightGBM baseline"] = round(time.perf_counter() - started, 2)
    return scores


def _evaluate_nbp(prep: Prepared, prob: np.ndarray, cfg: TrainConfig, baselines: bool,
                  cache: Path | None = None) -> Evaluation:
    split, products = prep.split, prep.products
    label_cols = [f"label_{p}" for p in products]
    seconds: dict[str, float] = {}

    def arrays(df):
        return df[label_cols].to_numpy(dtype=float), prep.mask(df)

    (y_tr, m_tr), (y_va, m_va), (y_te, m_te) = arrays(split.train), arrays(split.val), arrays(split.test)
    seg_tr = split.train[SEGMENT_COLUMN].to_numpy() if SEGMENT_COLUMN in split.train else None
    seg_te = split.test[SEGMENT_COLUMN].to_numpy() if SEGMENT_COLUMN in split.test else None
    scores = {"test": prob}
    if baselines:
        scores["popularity"] = np.broadcast_to(ev.popularity_scores(y_tr, m_tr, seg_tr, seg_te), y_te.shape)

        def fit() -> np.ndarray:
            x_tr, x_va, x_te, cats = ev.lightgbm_inputs(split.train, split.val, split.test, prep.numeric,
                                                        prep.categorical)
            return ev.lightgbm_nbp(x_tr, y_tr, m_tr, x_va, y_va, m_va, x_te, cats, seed=cfg.seed)

        scores["lightgbm"] = _lightgbm(prep, cfg, cache, fit, seconds)
    oracle = ev.align_truth(split.test, prep.truth, products)
    if oracle is not None:
        scores["oracle"] = oracle
    result = ev.evaluate_rankers(ev.NbpEvaluation(y_te, m_te, scores, products, seg_te))
    metrics = dict(result.metrics)
    if "oracle_map_at_7" in metrics and metrics["oracle_map_at_7"] > 0:
        metrics["test_map_at_7_vs_oracle"] = metrics["test_map_at_7"] / metrics["oracle_map_at_7"]
    if "lightgbm_map_at_7" in metrics and metrics["lightgbm_map_at_7"] > 0:
        metrics["test_map_at_7_vs_lightgbm"] = metrics["test_map_at_7"] / metrics["lightgbm_map_at_7"]
    figures = {}
    flat_y = (y_te * m_te).ravel()
    rows = m_te.ravel() > 0
    figures["gains_lift.png"] = ev.plot_gains({n: ev.gains_table(flat_y[rows], s.ravel()[rows])
                                               for n, s in scores.items()},
                                              "next-best-product (customer x product)")
    figures["calibration.png"] = ev.plot_calibration({"test": ev.calibration_table(flat_y[rows], prob.ravel()[rows])},
                                                     "next-best-product")
    figures["per_product_auc.png"] = ev.plot_bars(result.per_product_auc, "ROC AUC per product (test month)", "ROC AUC")
    if result.per_segment_map:
        figures["per_segment_map.png"] = ev.plot_bars(result.per_segment_map, f"MAP@7 per {SEGMENT_COLUMN} segment",
                                                      "MAP@7")
    details = {"per_product_auc": result.per_product_auc, "per_segment_map_at_7": result.per_segment_map,
               "seconds": seconds}
    return Evaluation(metrics, details, figures)


def _evaluate_churn(prep: Prepared, prob: np.ndarray, cfg: TrainConfig, baselines: bool,
                    cache: Path | None = None) -> Evaluation:
    split = prep.split
    y_te = split.test["label_churn"].to_numpy(dtype=float)
    scores = {"test": prob}
    seconds: dict[str, float] = {}
    if baselines:

        def fit() -> np.ndarray:
            x_tr, x_va, x_te, cats = ev.lightgbm_inputs(split.train, split.val, split.test, prep.numeric,
                                                        prep.categorical)
            return ev.lightgbm_binary(x_tr, split.train["label_churn"].to_numpy(float), x_va,
                                      split.val["label_churn"].to_numpy(float), x_te, cats, seed=cfg.seed)

        scores["lightgbm"] = _lightgbm(prep, cfg, cache, fit, seconds)
    # The label's event, holding nothing, has a true monthly probability `p_gone` (churning, or every
    # held product closing); banks simulated before it was recorded have only the churn hazard.
    column = "p_gone" if prep.truth is not None and "p_gone" in prep.truth.columns else "p_churn"
    # The truth is that of holding nothing: for churn defined otherwise there is no oracle.
    oracle = ev.align_truth(split.test, prep.truth, [column]) if cfg.label.definition == "holds_nothing" else None
    if oracle is not None:
        # A monthly probability; over the horizon it compounds (same ranking, comparable scale).
        scores["oracle"] = 1 - (1 - oracle.ravel()) ** cfg.horizon_months
    metrics: dict[str, float] = {}
    for name, s in scores.items():
        metrics.update(ev.binary_metrics(name, y_te, s))
    metrics["test_churn_rate"] = float(y_te.mean())
    metrics["test_rows"] = float(len(y_te))
    if "oracle_roc_auc" in metrics and metrics["oracle_roc_auc"] > 0:
        metrics["test_roc_auc_vs_oracle"] = metrics["test_roc_auc"] / metrics["oracle_roc_auc"]
    figures = {
        "gains_lift.png": ev.plot_gains({n: ev.gains_table(y_te, s) for n, s in scores.items()}, "churn"),
        "calibration.png": ev.plot_calibration({n: ev.calibration_table(y_te, s) for n, s in scores.items()}, "churn"),
    }
    details = {"calibration": {n: ev.calibration_table(y_te, s).to_dict(orient="list") for n, s in scores.items()},
               "seconds": seconds}
    return Evaluation(metrics, details, figures)


def _log_evaluation(mlflow, evaluation: Evaluation) -> None:
    import matplotlib.pyplot as plt

    mlflow.log_metrics({k: float(v) for k, v in evaluation.metrics.items() if np.isfinite(v)})
    with tempfile.TemporaryDirectory() as tmp:
        for name, fig in evaluation.figures.items():
            fig.savefig(Path(tmp) / name, dpi=90)
            plt.close(fig)
        (Path(tmp) / "evaluation.json").write_text(json.dumps(evaluation.details, indent=1, default=float))
        mlflow.log_artifacts(tmp, artifact_path="evaluation")


def _signature(meta: ModelMeta, example: pd.DataFrame, prob: np.ndarray) -> dict:
    from mlflow.models import infer_signature

    inputs = example[meta.preprocessor.numeric + meta.preprocessor.categorical].head(5)
    return infer_signature(inputs, pd.DataFrame(prob[:5], columns=meta.outputs)).to_dict()


def train_model(paths: Paths, task: str, cfg: TrainConfig,
                on_epoch: Callable[[int, dict[str, float]], None] | None = None,
                on_stage: Stage | None = None, prepared: Prepared | None = None,
                world: World | None = None) -> TrainResult | None:
    """Trains, evaluates beside the baselines, logs to MLflow, registers the version as
    `challenger`, and promotes it to `champion` if it passes the gate.

    Under torchrun (`world` set) every process trains; only rank 0 evaluates, logs and registers,
    the others return None.
    """
    stage = StageClock(on_stage or log.info)
    started = time.perf_counter()
    service, model_name, gate_metric = TASKS[task]
    prep = prepared or prepare(paths, task, cfg, stage)
    split, products = prep.split, prep.products
    stage("model inputs")
    pre = Preprocessor.fit(split.train, prep.numeric, prep.categorical, cfg.numeric_encoding, cfg.piecewise_bins)
    outputs = products if task == "nbp" else ["churn"]
    meta = ModelMeta(task=task, feature_service=service, preprocessor=pre, outputs=outputs,
                     hidden=list(cfg.hidden), embedding_dim=cfg.embedding_dim, dropout=cfg.dropout,
                     members=cfg.ensemble)
    train_data, val_data = prep.task_data(split.train, pre), prep.task_data(split.val, pre)

    stage(f"networks (training {task}: {len(split.train):,} train / {len(split.val):,} val / "
          f"{len(split.test):,} test rows)")
    result = fit_ensemble(task, meta, train_data, val_data, cfg, on_epoch=on_epoch, world=world)
    if world is not None and world.rank != 0:
        return None
    meta.temperature = fit_temperature(predict_logits(result.model, val_data), val_data.y, val_data.mask)
    meta.extra = {"split_months": split.months, "best_epoch": result.best_epoch}
    if result.member_epochs:
        meta.extra["member_best_epochs"] = result.member_epochs

    stage("evaluation (beside popularity, LightGBM and the oracle)" if cfg.baselines else "evaluation")
    evaluation = evaluate(prep, result.model, meta, cfg, baselines=cfg.baselines, cache=paths.baselines)
    evaluation.metrics["val_metric"] = result.best_val
    challenger_metric = evaluation.metrics[gate_metric]
    champion_version, champion_score, why = champion_metric(paths, prep, model_name)

    stage("MLflow logging and registry")
    mlflow = registry.tracking(paths)
    exp = registry.experiment_id(paths, task)
    with mlflow.start_run(experiment_id=exp, run_name=f"{task}-{time.strftime('%Y%m%d-%H%M%S')}") as run:
        mlflow.log_params({**cfg.model_dump(exclude={"hidden"}), "hidden": ",".join(map(str, cfg.hidden)),
                           "feature_service": service, "n_features": len(prep.features),
                           "train_rows": len(split.train), "split": split.kind,
                           "effective_batch_size": effective_batch_size(cfg, len(train_data)),
                           "data_hash": prep.data_hash})
        mlflow.set_tags({"feature_service": service, "task": task, "test_month": ",".join(split.months["test"]),
                         "split": split.kind})
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        epoch_metrics = [Metric(k, float(v), now, int(h["epoch"])) for h in result.history
                         for k, v in h.items() if k not in ("epoch", "member")]
        client = mlflow.MlflowClient()
        for i in range(0, len(epoch_metrics), 900):  # one call per batch, not one per epoch
            client.log_batch(run.info.run_id, metrics=epoch_metrics[i:i + 900])
        if champion_score is not None:
            evaluation.metrics[f"champion_{gate_metric}"] = champion_score
        _log_evaluation(mlflow, evaluation)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = save_checkpoint(Path(tmp) / registry.MODEL_ARTIFACT_PATH, result.model, meta)
            example_prob = predict_proba(result.model, meta, split.test.head(5))
            (ckpt / "signature.json").write_text(json.dumps(_signature(meta, split.test, example_prob)))
            mlflow.log_artifacts(str(ckpt), artifact_path=registry.MODEL_ARTIFACT_PATH)
        run_id = run.info.run_id
    version = registry.register(paths, model_name, run_id)
    promoted, reason = gate(challenger_metric, champion_score, cfg.promotion_margin, why)
    if promoted:
        registry.promote(paths, model_name, version, reason)
    client.set_model_version_tag(model_name, version, "gate", reason)
    # Logged once every stage has ended (the LightGBM baseline is part of the evaluation's time).
    seconds = {**stage.seconds(), **evaluation.details.get("seconds", {})}
    client.log_batch(run_id, metrics=[Metric(f"seconds_{slug(k)}", v, now, 0) for k, v in seconds.items()])
    return TrainResult(task, run_id, version, evaluation.metrics, split.months,
                       {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
                       time.perf_counter() - started, promoted, reason, result.history, seconds)


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
    prep = prepare(paths, task, cfg, stage)
    stage(f"evaluating {model_name} v{version} beside the baselines")
    evaluation = evaluate(prep, model, meta, cfg, baselines=cfg.baselines, cache=paths.baselines)
    mlflow = registry.tracking(paths)
    with mlflow.start_run(experiment_id=registry.experiment_id(paths, task), run_name=f"evaluate-{task}-v{version}"):
        mlflow.set_tags({"evaluation_of": f"{model_name}/{version}", "test_month": ",".join(prep.split.months["test"])})
        _log_evaluation(mlflow, evaluation)
    return version, evaluation
