"""Hyper-parameters of the PyTorch models (`configs/nbp.yaml`, `configs/churn.yaml`,
`configs/campaign.yaml`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nextbest.config.loading import ConfigError, validated
from nextbest.settings import config_file


class ChurnLabel(BaseModel):
    """What counts as churn (`label:` in `configs/churn.yaml`)."""

    model_config = ConfigDict(extra="forbid")

    definition: Literal["holds_nothing", "product_closed", "table"] = Field(
        default="holds_nothing",
        description="holds_nothing: a client holds no product in one of the next horizon_months (the lifecycle "
                    "state `former`). product_closed: a client holding one of `products` no longer holds it in "
                    "one of the next horizon_months. table: the bank's own labels, read from `table`.")
    products: list[str] = Field(default_factory=list,
                                description="product_closed: the products whose closing counts (empty: any product).")
    table: Path | None = Field(
        default=None, description="table: a parquet or CSV file with customer_id, snapshot_date and label (0/1); "
                                  "a relative path is read from the project folder (else the current directory).")

    @model_validator(mode="after")
    def _fields_of_the_definition(self) -> "ChurnLabel":
        if self.definition == "table" and self.table is None:
            raise ValueError("definition 'table' needs `table`, the file of labels")
        if self.definition != "table" and self.table is not None:
            raise ValueError(f"`table` goes with definition 'table', not {self.definition!r}")
        if self.definition != "product_closed" and self.products:
            raise ValueError(f"`products` goes with definition 'product_closed', not {self.definition!r}")
        return self


class ResponseLabel(BaseModel):
    """Where the campaign-response model's labels come from when it trains on the bank's own data
    (`response:` in `configs/campaign.yaml`; `nextbest campaign` without --path)."""

    model_config = ConfigDict(extra="forbid")

    definition: Literal["offers", "table"] = Field(
        default="offers", description="offers: raw/offers.parquet, each offer a row, accepted = 1 (rejected or no "
        "response = 0). table: the bank's own contact table, read from `table`.")
    table: Path | None = Field(
        default=None, description="table: a parquet or CSV file with customer_id, contacted_at and label (0/1), "
        "optionally product_id and channel; a relative path is read from the project folder.")

    @model_validator(mode="after")
    def _fields_of_the_definition(self) -> "ResponseLabel":
        if (self.definition == "table") != (self.table is not None):
            raise ValueError("`table` goes with definition 'table', and definition 'table' needs it")
        return self


class TrainConfig(BaseModel):
    """Hyper-parameters of one model (`configs/nbp.yaml`, `configs/churn.yaml`): its family, and the network's."""

    model_config = ConfigDict(extra="forbid")

    family: Literal["network", "lightgbm", "auto"] = Field(
        default="network", description="network: the PyTorch network below. lightgbm: gradient-boosted trees (one "
        "per product for nbp), saved in LightGBM's own text format. auto: both are trained and registered, and the "
        "better on the held-out month goes to the promotion gate.")
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
    max_steps_per_epoch: int | None = Field(
        default=None, ge=1, description="On a large training set an epoch ends after this many optimiser steps "
        "(the next epoch goes on through the same shuffled pass), so validation, early stopping and patience "
        "come at a fixed number of steps rather than one per full pass; null: an epoch is a full pass.")
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
    max_train_rows: int | None = Field(
        default=1_000_000, ge=1, description="Most customer-months the training window keeps, drawn at random "
        "(seeded) before the features are joined; null keeps them all. Bounds a large bank's memory and time.")
    max_eval_rows: int | None = Field(
        default=250_000, ge=1, description="Most rows each of the validation and test windows keeps, drawn alike; "
        "null keeps them all.")
    seed: int = 42
    horizon_months: int = Field(default=3, ge=1, description="Churn only: months ahead that count as churn.")
    label: ChurnLabel = Field(default_factory=ChurnLabel, description="Churn only: what counts as churn.")
    response: ResponseLabel = Field(default_factory=ResponseLabel,
                                    description="Campaign only: where the bank's own responses come from.")
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


def load_train_config(name: str, path: Path | None = None, catalogue=None) -> TrainConfig:
    """Loads `configs/<name>.yaml` (name is `nbp` or `churn`); with the catalogue, checks the products
    the churn label names."""
    path = path or config_file(f"{name}.yaml")
    cfg = validated(TrainConfig, path)
    if catalogue is not None:
        unknown = [p for p in cfg.label.products if p not in catalogue.ids]
        if unknown:
            raise ConfigError(f"{path}: field label.products: unknown product(s) {unknown} (not in products.yaml)")
    return cfg


def label_table_path(cfg: TrainConfig) -> Path | None:
    """The churn label table, a relative path read from the project folder (else the current directory)."""
    from nextbest.settings import project_relative

    return None if cfg.label.table is None else project_relative(cfg.label.table)
