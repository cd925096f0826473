"""Typed configuration loaded from the project's `configs/*.yaml` (or the package defaults, see
`nextbest.settings.config_file`); nothing is read at import time."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nextbest.settings import config_file

GLOBAL_HOLDOUT = "all"  # the control group that gets no offer at all

Category = Literal["account", "card", "deposit", "loan", "investment", "insurance", "service"]
# The contact channels, in the order of nextbest.constants.CHANNELS (a test keeps the two equal).
Channel = Literal["mobile_app", "web", "email", "push", "sms", "branch", "call_center"]


class ConfigError(ValueError):
    """A configuration file is missing or invalid; the message names the file and field."""


class Eligibility(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_age: int = 18
    max_age: int = 120
    requires: list[str] = Field(default_factory=list, description="At least one of these must be held.")


class Product(BaseModel):
    model_config = ConfigDict(extra="forbid")

    product_id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name: str
    category: Category
    margin: float = Field(ge=0)
    eligibility: Eligibility = Field(default_factory=Eligibility)


class Catalogue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int
    products: list[Product]

    @model_validator(mode="after")
    def _unique_and_known(self) -> "Catalogue":
        ids = [p.product_id for p in self.products]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate product_id {dupes}")
        for p in self.products:
            unknown = [r for r in p.eligibility.requires if r not in ids]
            if unknown:
                raise ValueError(f"product {p.product_id!r} requires unknown product(s) {unknown}")
        return self

    @property
    def ids(self) -> list[str]:
        return [p.product_id for p in self.products]

    def by_id(self) -> dict[str, Product]:
        return {p.product_id: p for p in self.products}

    def categories(self) -> dict[str, str]:
        """product_id -> category."""
        return {p.product_id: p.category for p in self.products}


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


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    feature: str
    op: Literal["<", "<=", ">", ">=", "==", "!=", "in"]
    value: float | int | str | bool | list[float | int | str | bool]


class Rule(BaseModel):
    """Conditions on feature columns: `all` must all hold and, if given, at least one of `any`."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    all: list[Condition] = Field(default_factory=list)
    any: list[Condition] = Field(default_factory=list)

    @model_validator(mode="after")
    def _not_empty(self) -> "Rule":
        if not self.all and not self.any:
            raise ValueError(f"rule {self.name!r} has no conditions")
        return self

    @property
    def features(self) -> set[str]:
        return {c.feature for c in (*self.all, *self.any)}


class SegmentGroup(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: str
    rules: list[Rule]


class LifecycleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    new_months: int = Field(default=6, ge=1)
    dormant_months: int = Field(default=3, ge=1)


class ValueTierConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top_share: float = Field(default=0.2, gt=0, lt=1)


class SegmentsConfig(BaseModel):
    """`configs/segments.yaml`: lifecycle thresholds, segment groups, need flags, value tier."""

    model_config = ConfigDict(extra="forbid")

    version: int
    lifecycle: LifecycleConfig = Field(default_factory=LifecycleConfig)
    groups: dict[str, SegmentGroup]
    needs: dict[str, Rule] = Field(default_factory=dict)
    value_tier: ValueTierConfig = Field(default_factory=ValueTierConfig)


class CreditCooldown(BaseModel):
    model_config = ConfigDict(extra="forbid")

    days: int = Field(default=90, ge=0)
    categories: list[Category] = Field(default_factory=lambda: ["loan"])
    products: list[str] = Field(default_factory=list, description="Credit products outside those categories.")
    alternative: str | None = Field(default=None, description="Action offered instead, from bandit.yaml.")


class RulesConfig(BaseModel):
    """Contact and offer rules (`configs/rules.yaml`); opt-out and consent are always on."""

    model_config = ConfigDict(extra="forbid")

    version: int
    channel_consent: dict[Channel, str]
    credit_cooldown: CreditCooldown = Field(default_factory=CreditCooldown)
    frequency_caps_per_week: dict[Channel, int] = Field(default_factory=dict)
    rejection_cooldown_days: int = Field(default=30, ge=0)
    eligibility: bool = True

    @model_validator(mode="after")
    def _known_consents(self) -> "RulesConfig":
        known = {"consent_email", "consent_push", "consent_sms", "consent_call"}
        bad = {c: f for c, f in self.channel_consent.items() if f not in known}
        if bad:
            raise ValueError(f"channel_consent names unknown consent flag(s) {bad}; known: {sorted(known)}")
        negative = {c: n for c, n in self.frequency_caps_per_week.items() if n < 0}
        if negative:
            raise ValueError(f"frequency_caps_per_week must be >= 0, got {negative}")
        return self


class Action(BaseModel):
    """An offer that is not a catalogue product (retention call, repayment help)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["retention", "service"]
    acceptance: float = Field(gt=0, lt=1)
    value: float = Field(default=0.0, ge=0)


class BanditPrior(BaseModel):
    model_config = ConfigDict(extra="forbid")

    intercept: float = 0.0
    score_weight: float = 1.0
    variance: float = Field(default=0.25, gt=0, description="Prior variance of every weight around its mean, "
                                                           "unless set below for its block.")
    score_variance: float | None = Field(
        default=None, gt=0, description="Prior variance of the weight on logit P(acquire). That input is large "
                                        "(about -5 to -9), so the same variance as the others lets one early reward "
                                        "swing every offer's odds; a small one trusts the champion's ranking.")
    fit_variance: float | None = Field(default=None, gt=0,
                                       description="Prior variance of the channel-fit weights (category x channel).")


class Levers(BaseModel):
    model_config = ConfigDict(extra="forbid")

    products: dict[str, float] = Field(default_factory=dict)
    categories: dict[str, float] = Field(default_factory=dict)


class RetentionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    churn_threshold: float = Field(default=0.25, ge=0, le=1)
    action: str = "retention_call"


class ColdStartConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entry_products: list[str]
    acceptance: dict[str, float] = Field(default_factory=dict)
    page_boost: float = Field(default=2.0, ge=1)


class Trigger(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_amount: float = Field(default=0, ge=0)
    categories: list[Category]
    channel: Channel = "push"


class Campaign(BaseModel):
    model_config = ConfigDict(extra="forbid")

    products: list[str] = Field(min_length=1)
    share: float = Field(ge=0, lt=1)


class HoldoutConfig(BaseModel):
    """Random control groups: customers kept out of offers so the uplift of offering can be measured."""

    model_config = ConfigDict(extra="forbid")

    salt: str = Field(default="holdout-v1", min_length=1)
    share: float = Field(default=0.0, ge=0, lt=1)  # global control group: no offer at all
    campaigns: dict[str, Campaign] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _no_reserved_name(self) -> "HoldoutConfig":
        if GLOBAL_HOLDOUT in self.campaigns:
            raise ValueError(f"campaigns: {GLOBAL_HOLDOUT!r} is reserved for the global control group")
        return self


class BanditConfig(BaseModel):
    """Arbitration and exploration policy (`configs/bandit.yaml`)."""

    model_config = ConfigDict(extra="forbid")

    version: int
    policy: str = "lin_ts"
    explore_share: float = Field(default=0.1, ge=0, le=1)
    uniform_share: float = Field(default=0.0, ge=0, le=1,
                                 description="Part of explore_share ranked uniformly at random: every allowed offer "
                                             "then has an exact propensity of at least uniform_share / n.")
    propensity_samples: int = Field(default=256, ge=16, le=100_000)
    seed: int = 42
    prior: BanditPrior = Field(default_factory=BanditPrior)
    snapshot_every: int = Field(default=50, ge=1)
    levers: Levers = Field(default_factory=Levers)
    actions: dict[str, Action] = Field(default_factory=dict)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    cold_start: ColdStartConfig
    online_budget_ms: float = Field(default=50, gt=0)
    triggers: dict[Literal["salary_received", "large_deposit"], Trigger] = Field(default_factory=dict)
    holdout: HoldoutConfig = Field(default_factory=HoldoutConfig)

    @model_validator(mode="after")
    def _known_actions(self) -> "BanditConfig":
        if self.retention.action not in self.actions:
            raise ValueError(f"retention.action {self.retention.action!r} is not one of actions {sorted(self.actions)}")
        if self.uniform_share > self.explore_share:
            raise ValueError(f"uniform_share {self.uniform_share} is part of explore_share and cannot exceed it "
                             f"({self.explore_share})")
        return self


def _load_yaml(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def validated(model: type[BaseModel], path: Path) -> BaseModel:
    """Loads a YAML file into `model`; any problem is a ConfigError naming the file, field and value."""
    try:
        return model.model_validate(_load_yaml(path))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise ConfigError(f"{path}: field {where}: {first['msg']} (got {first.get('input')!r})") from None


def load_catalogue(path: Path | None = None) -> Catalogue:
    return validated(Catalogue, path or config_file("products.yaml"))


def load_segments(path: Path | None = None, catalogue: Catalogue | None = None) -> SegmentsConfig:
    """Loads `configs/segments.yaml`; with the catalogue, checks the products its `held_<product>`
    conditions name (a product removed from products.yaml must leave the segment rules too)."""
    path = path or config_file("segments.yaml")
    cfg = validated(SegmentsConfig, path)
    if catalogue is not None:
        rules = [(f"groups.{g}", r) for g, group in cfg.groups.items() for r in group.rules]
        rules += [(f"needs.{n}", r) for n, r in cfg.needs.items()]
        for where, rule in rules:
            held = sorted(f for f in rule.features if f.startswith("held_") and not f.startswith("held_lag"))
            unknown = [f for f in held if f.removeprefix("held_") not in catalogue.ids]
            if unknown:
                raise ConfigError(f"{path}: field {where}: rule {rule.name!r} uses {unknown}, but products.yaml "
                                  f"has no product {[f.removeprefix('held_') for f in unknown]}")
    return cfg


def load_train_config(name: str, path: Path | None = None) -> TrainConfig:
    """Loads `configs/<name>.yaml` (name is `nbp` or `churn`)."""
    return validated(TrainConfig, path or config_file(f"{name}.yaml"))


def load_rules(path: Path | None = None, catalogue: Catalogue | None = None,
               bandit: BanditConfig | None = None) -> RulesConfig:
    """Loads `configs/rules.yaml`; with the catalogue and policy, checks the products and actions it names."""
    path = path or config_file("rules.yaml")
    rules = validated(RulesConfig, path)
    if catalogue is not None:
        unknown = [p for p in rules.credit_cooldown.products if p not in catalogue.ids]
        if unknown:
            raise ConfigError(f"{path}: field credit_cooldown.products: unknown product(s) {unknown}")
    alternative = rules.credit_cooldown.alternative
    if bandit is not None and alternative is not None and alternative not in bandit.actions:
        raise ConfigError(f"{path}: field credit_cooldown.alternative: {alternative!r} is not an action in "
                          f"bandit.yaml ({sorted(bandit.actions)})")
    return rules


def load_bandit(path: Path | None = None, catalogue: Catalogue | None = None) -> BanditConfig:
    """Loads `configs/bandit.yaml`; with the catalogue, checks the products it names."""
    path = path or config_file("bandit.yaml")
    cfg = validated(BanditConfig, path)
    if catalogue is not None:
        named = [*cfg.cold_start.entry_products, *cfg.cold_start.acceptance, *cfg.levers.products,
                 *(p for c in cfg.holdout.campaigns.values() for p in c.products)]
        unknown = sorted({p for p in named if p not in catalogue.ids})
        if unknown:
            raise ConfigError(f"{path}: unknown product(s) {unknown} (not in products.yaml)")
        clash = sorted(set(cfg.actions) & set(catalogue.ids))
        if clash:
            raise ConfigError(f"{path}: field actions: {clash} are also product ids")
    return cfg


class ProjectFile(BaseModel):
    """`nextbest.yaml`, the file that marks a project folder (written by `nextbest init`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="The project's name, shown by `nextbest info`.")
    workdir: str = Field(default="work", min_length=1,
                         description="The work directory, relative to the project folder (or absolute).")
    mlflow_uri: str | None = Field(default=None, description="A shared MLflow tracking server (http://HOST:PORT) "
                                   "for training, the registry, serving and the monitor; default: the work "
                                   "directory's own SQLite file. The environment's NEXTBEST_MLFLOW_URI wins.")


def load_project_file(path: Path) -> dict:
    return validated(ProjectFile, path).model_dump()


# -- monitoring (configs/monitoring.yaml) ------------------------------------------------------------

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


# The configs every stage reads, in the order they are checked (a later one may name an earlier one).
CONFIG_NAMES = ("products.yaml", "segments.yaml", "bandit.yaml", "rules.yaml", "nbp.yaml", "churn.yaml",
                "campaign.yaml", "monitoring.yaml")


def validate_all() -> dict[str, Path]:
    """Loads and cross-checks every config in force (the project's, else the defaults).

    Returns:
        config name -> the file that was read.

    Raises:
        ConfigError: the first invalid file, naming the file, field and value.
    """
    from nextbest.settings import find_project, project_settings

    project_settings(find_project())  # nextbest.yaml itself
    catalogue = load_catalogue()
    load_segments(catalogue=catalogue)
    bandit = load_bandit(catalogue=catalogue)
    load_rules(catalogue=catalogue, bandit=bandit)
    for task in ("nbp", "churn", "campaign"):
        load_train_config(task)
    load_monitoring()
    return {name: config_file(name) for name in CONFIG_NAMES}
