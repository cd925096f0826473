"""Training loops for the next-best-product and churn models (tensors in, model out)."""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from nextbest.config import TrainConfig
from nextbest.training.datasets import target_mask
from nextbest.training.metrics import map_at_k, roc_auc
from nextbest.training.models import Ensemble, ModelMeta, Preprocessor, TabularNet, build_model, tensors

EpochCallback = Callable[[int, dict[str, float]], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TaskData:
    """Model inputs of one split: features, targets and the mask of what may be predicted."""

    x_num: torch.Tensor  # [n, n_numeric] float32
    x_cat: torch.Tensor  # [n, n_categorical] int64
    y: torch.Tensor  # [n, n_outputs] float32
    mask: torch.Tensor  # [n, n_outputs] float32, 0 where the output is not a valid target (held product)

    def __len__(self) -> int:
        return len(self.y)


def nbp_task(df: pd.DataFrame, pre: Preprocessor, products: list[str], catalogue=None) -> TaskData:
    """Targets = acquired next month; mask = products not held now (held ones cannot be acquired)
    and, given the catalogue, that the customer is eligible for (`datasets.target_mask`)."""
    x_num, x_cat = tensors(pre, df)
    y = torch.from_numpy(df[[f"label_{p}" for p in products]].to_numpy(dtype=np.float32))
    mask = target_mask(df, products, catalogue).astype(np.float32)
    return TaskData(x_num, x_cat, y, torch.from_numpy(mask))


def binary_task(df: pd.DataFrame, pre: Preprocessor, label: str) -> TaskData:
    """One binary target, every row counted."""
    x_num, x_cat = tensors(pre, df)
    y = torch.from_numpy(df[[label]].to_numpy(dtype=np.float32))
    return TaskData(x_num, x_cat, y, torch.ones_like(y))


def churn_task(df: pd.DataFrame, pre: Preprocessor) -> TaskData:
    return binary_task(df, pre, "label_churn")


@torch.no_grad()
def predict_logits(model: TabularNet | Ensemble, data: TaskData, batch_size: int = 8192) -> torch.Tensor:
    model.eval()
    out = [model(data.x_num[i:i + batch_size], data.x_cat[i:i + batch_size])
           for i in range(0, len(data), batch_size)]
    return torch.cat(out) if out else torch.zeros_like(data.y)


def masked_scores(logits: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Scores for ranking with non-targets (held products) pushed to -inf."""
    return torch.where(mask > 0, logits, torch.full_like(logits, -np.inf)).numpy()


def validation_scores(task: str, model: TabularNet | Ensemble, data: TaskData) -> tuple[float, float]:
    """(metric, loss) on a validation split: MAP@7 (nbp) or ROC AUC (churn), and the masked
    log-loss the model is trained on."""
    logits = predict_logits(model, data)
    loss = float((nn.functional.binary_cross_entropy_with_logits(logits, data.y, reduction="none") * data.mask).sum()
                 / data.mask.sum().clamp(min=1.0))
    if task == "nbp":
        return map_at_k(data.y.numpy(), masked_scores(logits, data.mask), k=7), loss
    return roc_auc(data.y.numpy(), logits.numpy()), loss


@dataclass
class FitResult:
    model: TabularNet | Ensemble
    best_epoch: int  # an ensemble's: its first network's
    best_val: float
    history: list[dict[str, float]] = field(default_factory=list)
    member_epochs: list[int] = field(default_factory=list)  # an ensemble's: each network's kept epoch


@dataclass(frozen=True)
class World:
    """This process's place in a DistributedDataParallel run (torchrun, gloo on CPU)."""

    rank: int
    size: int


def effective_batch_size(cfg: TrainConfig, rows: int) -> int:
    """`cfg.batch_size`, or less so that an epoch over `rows` examples takes at least
    `cfg.min_steps_per_epoch` optimiser steps (never below 1)."""
    return max(1, min(cfg.batch_size, math.ceil(rows / cfg.min_steps_per_epoch)))


def _shuffled_batches(rows: int, batch: int, gen: torch.Generator):
    """Batches of row indices without end: each pass over the rows in a new order (from `gen`)."""
    while True:
        order = torch.randperm(rows, generator=gen)
        for i in range(0, rows, batch):
            yield order[i:i + batch]


def fit(task: str, meta: ModelMeta, train: TaskData, val: TaskData, cfg: TrainConfig,
        on_epoch: EpochCallback | None = None, world: World | None = None) -> FitResult:
    """Trains with masked BCE, Adam and early stopping on the validation metric (`cfg.select_on`
    "metric") or loss ("loss": smoother, so the kept epoch is less the luck of one noisy month).
    `best_val` is the kept epoch's validation metric either way; the history has both.

    Args:
        task: "nbp" (metric MAP@7) or "churn" (metric ROC AUC).
        meta: model description (sizes come from its preprocessor and outputs).
        train, val: model inputs.
        cfg: hyper-parameters.
        on_epoch: called after each epoch with (epoch, metrics); used for progress and logging.
        world: set when running under torchrun; each global batch is split across the processes
            and gradients are all-reduced, so the updates equal a single process's on the same batch.
    """
    seed_everything(cfg.seed)
    model = build_model(meta)
    net: nn.Module = model
    if world is not None and world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss(reduction="none")
    gen = torch.Generator().manual_seed(cfg.seed)  # the same order on every process
    best = FitResult(copy.deepcopy(model), -1, -np.inf)
    best_key, stale = -np.inf, 0
    batch = effective_batch_size(cfg, len(train))
    passes = _shuffled_batches(len(train), batch, gen)
    steps = math.ceil(len(train) / batch)
    if cfg.max_steps_per_epoch is not None:
        steps = min(steps, cfg.max_steps_per_epoch)
    for epoch in range(cfg.max_epochs):
        net.train()
        total, weight = 0.0, 0.0
        for _ in range(steps):
            idx = next(passes)
            count = train.mask[idx].sum()
            if world is not None and world.size > 1:
                idx = idx[world.rank::world.size]  # this process's share of the global batch
            logits = net(train.x_num[idx], train.x_cat[idx])  # [B, n_outputs]
            mask = train.mask[idx]
            # Normalised by the global batch's count (x world size: DDP averages gradients), the
            # update equals the single-process one.
            scale = world.size if world is not None and world.size > 1 else 1
            loss = (loss_fn(logits, train.y[idx]) * mask).sum() * scale / count.clamp(min=1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() / scale * float(count)
            weight += float(count)
        val_metric, val_loss = validation_scores(task, model, val)
        metrics = {"train_loss": total / max(weight, 1.0), "val_loss": val_loss, "val_metric": val_metric}
        best.history.append({"epoch": epoch, **metrics})
        if on_epoch:
            on_epoch(epoch, metrics)
        key = -val_loss if cfg.select_on == "loss" else val_metric
        if key > best_key + (1e-7 if cfg.select_on == "loss" else 1e-5):
            best.model, best.best_epoch, best.best_val = copy.deepcopy(model), epoch, val_metric
            best_key, stale = key, 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    best.model.eval()
    return best


def fit_ensemble(task: str, meta: ModelMeta, train: TaskData, val: TaskData, cfg: TrainConfig,
                 on_epoch: EpochCallback | None = None, world: World | None = None) -> FitResult:
    """`fit`, or with `cfg.ensemble` > 1 that many networks trained alike with seeds cfg.seed,
    cfg.seed + 1, ..., averaged into one Ensemble (`meta.members` must equal `cfg.ensemble`).

    The history numbers epochs across the networks (`epoch` runs on, `member` says whose), so
    per-epoch metrics and progress never restart; `best_val` is the ensemble's own.
    """
    if meta.members != cfg.ensemble:
        raise ValueError(f"model description has {meta.members} members, config asks for ensemble {cfg.ensemble}")
    if cfg.ensemble == 1:
        return fit(task, meta, train, val, cfg, on_epoch, world)
    single = dataclasses.replace(meta, members=1)
    nets, history, epochs, offset = [], [], [], 0
    for member in range(cfg.ensemble):
        def member_epoch(epoch: int, metrics: dict[str, float], member: int = member, offset: int = offset) -> None:
            if on_epoch:
                on_epoch(offset + epoch, {**metrics, "member": member})

        result = fit(task, single, train, val, cfg.model_copy(update={"seed": cfg.seed + member, "ensemble": 1}),
                     member_epoch, world)
        nets.append(result.model)
        epochs.append(result.best_epoch)
        history += [{**h, "epoch": offset + h["epoch"], "member": member} for h in result.history]
        offset += len(result.history)
    model = Ensemble(nets)  # validation_scores puts it in eval mode
    return FitResult(model, epochs[0], validation_scores(task, model, val)[0], history, epochs)


def fit_temperature(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> float:
    """Temperature scaling on validation logits (calibration without changing the ranking)."""
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)
    loss_fn = nn.BCEWithLogitsLoss(reduction="none")

    def closure():
        opt.zero_grad()
        loss = (loss_fn(logits / log_t.exp(), y) * mask).sum() / mask.sum().clamp(min=1.0)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))
