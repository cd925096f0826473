"""The monitor's settings (`configs/monitoring.yaml`): feature, prediction and outcome drift, the
gate, KPIs and control-group uplift."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nextbest.config.loading import validated
from nextbest.settings import config_file

# Drift distances only: their value does not grow with the row count (see nextbest.monitoring.drift).
NUMERICAL_METHODS = ("wasserstein", "jensenshannon", "psi", "hellinger", "kl_div", "ed")
CATEGORICAL_METHODS = ("jensenshannon", "psi", "hellinger", "kl_div")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ColumnRule(_Strict):
    method: Optional[str] = None
    threshold: Optional[float] = Field(default=None, ge=0)


class ServingSection(_Strict):
    feature_sample_share: float = Field(default=0.05, ge=0, le=1)


class FeatureSection(_Strict):
    include: Optional[list[str]] = None
    exclude: list[str] = []
    numerical_method: str = "wasserstein"
    numerical_threshold: float = Field(default=0.1, gt=0)
    categorical_method: str = "jensenshannon"
    categorical_threshold: float = Field(default=0.1, gt=0)
    per_column: dict[str, ColumnRule] = {}
    natural_variation_multiplier: float = Field(default=1.5, ge=0)
    max_natural_threshold: float = Field(default=0.5, gt=0)
    censor_cap_months: int = Field(default=6, ge=1)
    derived_lookback_months: int = Field(default=6, ge=0)
    lookback: dict[str, int] = {}
    max_categories: int = Field(default=20, ge=2)
    min_rows: int = Field(default=30, ge=2)
    calibration_rows: int = Field(default=20_000, ge=100)
    report_max_rows: int = Field(default=100_000, ge=100)

    @field_validator("numerical_method")
    @classmethod
    def _numerical(cls, v: str) -> str:
        return _check_method(v, NUMERICAL_METHODS)

    @field_validator("categorical_method")
    @classmethod
    def _categorical(cls, v: str) -> str:
        return _check_method(v, CATEGORICAL_METHODS)

    @field_validator("per_column")
    @classmethod
    def _per_column(cls, v: dict[str, ColumnRule]) -> dict[str, ColumnRule]:
        for column, rule in v.items():
            if rule.method is not None and rule.method not in NUMERICAL_METHODS:
                raise ValueError(f"column {column!r}: method must be one of {', '.join(NUMERICAL_METHODS)}, "
                                 f"got {rule.method!r}")
        return v


class PredictionSection(_Strict):
    method: str = "wasserstein"
    threshold: float = Field(default=0.1, gt=0)
    reference_sample_rows: int = Field(default=20_000, ge=100)

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        return _check_method(v, NUMERICAL_METHODS)


class OutcomeSection(_Strict):
    acceptance_period: Literal["week", "month"] = "week"
    maturity_days: float = Field(default=7, ge=0)
    min_offers: int = Field(default=200, ge=1)
    calibration_bins: int = Field(default=10, ge=2)


class GateSection(_Strict):
    max_share_drifted: float = Field(default=0.02, ge=0, le=1)
    never_drift: list[str] = []
    max_drifted_products: int = Field(default=0, ge=0)
    max_acceptance_drop: float = Field(default=0.3, ge=0, le=1)
    max_churn_calibration_gap: float = Field(default=0.05, ge=0, le=1)
    include_served: bool = False


class KpiSection(_Strict):
    since: str | float | None = None   # ISO date or epoch seconds; None: the whole log
    until: str | float | None = None


class UpliftSection(_Strict):
    window_days: float = Field(default=30, gt=0)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    n_boot: int = Field(default=1000, ge=100)
    conversion_feedback: list[Literal["convert", "accept"]] = ["convert"]
    campaigns: dict[str, list[str]] | None = None  # None: configs/bandit.yaml holdout campaigns plus "all"
    since: str | float | None = None
    until: str | float | None = None


class MonitoringConfig(_Strict):
    version: int = 1
    serving: ServingSection = ServingSection()
    features: FeatureSection = FeatureSection()
    predictions: PredictionSection = PredictionSection()
    outcomes: OutcomeSection = OutcomeSection()
    gate: GateSection = GateSection()
    kpi: KpiSection = KpiSection()
    uplift: UpliftSection = UpliftSection()
    seed: int = 42


def _check_method(value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"must be one of {', '.join(allowed)} (distances; p-value tests flag every tiny "
                         f"difference at a bank's row counts), got {value!r}")
    return value


def load_monitoring(path: Path | None = None) -> MonitoringConfig:
    """Loads and validates `configs/monitoring.yaml`.

    Raises:
        ConfigError: missing file, bad YAML, or a bad key or value (the message names it).
    """
    return validated(MonitoringConfig, Path(path) if path else config_file("monitoring.yaml"))
