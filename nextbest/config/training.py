"""Hyper-parameters of the PyTorch models (`configs/nbp.yaml`, `configs/churn.yaml`,
`configs/campaign.yaml`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from nextbest.config.loading import validated
from nextbest.settings import config_file


class TrainConfig(BaseModel):
    """Hyper-parameters of one PyTorch model (`configs/nbp.yaml`, `configs/churn.yaml`)."""

    model_config = ConfigDict(extra="forbid")

    hidden: list[int] = Field(default_factory=lambda: [128, 64])
    embedding_dim: int = Field(default=4, ge=1)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=1e-5, ge=0)
    batch_size: int = Field(default=512, ge=1)
    min_steps_per_epoch: int = Field(
        default=32, ge=1, description="The batch shrinks below batch_size when the training set is too small for "
                                      "this many optimiser steps per epoch, so settings tuned on a large bank "
                                      "still train on a small one.")
    max_epochs: int = Field(default=30, ge=1)
    patience: int = Field(default=4, ge=1)
    select_on: Literal["metric", "loss"] = Field(
        default="metric", description="Early stopping and the kept epoch: the validation metric (MAP@7 / ROC AUC) "
                                      "or the validation loss (masked log-loss, smoother on one noisy month).")
    numeric_encoding: Literal["standard", "piecewise"] = Field(
        default="standard", description="standard: sign-log, then standardised. piecewise: also a piecewise-linear "
                                        "encoding on the training quantiles, so thresholds cost the network one "
                                        "weight (training.models.Preprocessor).")
    piecewise_bins: int = Field(default=8, ge=2, le=64, description="Quantile bins per numeric feature (piecewise).")
    ensemble: int = Field(default=1, ge=1, le=16,
                          description="Networks trained alike with seeds seed, seed + 1, ...; the model averages "
                                      "their logits (one artifact; `tune` scores single networks).")
    seed: int = 42
    horizon_months: int = Field(default=3, ge=1, description="Churn only: months ahead that count as churn.")
    val_months: int = Field(default=1, ge=1)
    test_months: int = Field(default=1, ge=1)
    promotion_margin: float = Field(default=0.0, ge=0,
                                    description="A challenger becomes champion only if its test metric beats the "
                                                "champion's on the same month by at least this much.")
    baselines: bool = Field(default=True, description="Also fit LightGBM and the popularity baseline.")
    min_positives: int = Field(
        default=10, ge=1, description="Fewest positive labels the training and test windows must each hold (and "
        "the validation window at least one): with fewer, training stops before it starts, saying what the data "
        "holds.")


def load_train_config(name: str, path: Path | None = None) -> TrainConfig:
    """Loads `configs/<name>.yaml` (name is `nbp` or `churn`)."""
    return validated(TrainConfig, path or config_file(f"{name}.yaml"))
