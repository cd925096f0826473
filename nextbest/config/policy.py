"""The decision policy: contact and offer rules (`configs/rules.yaml`) and arbitration,
exploration, actions, triggers and control groups (`configs/bandit.yaml`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nextbest.config.catalogue import Catalogue, Category
from nextbest.config.loading import ConfigError, validated
from nextbest.settings import config_file

GLOBAL_HOLDOUT = "all"  # the control group that gets no offer at all

# The contact channels, in the order of nextbest.constants.CHANNELS (a test keeps the two equal).
Channel = Literal["mobile_app", "web", "email", "push", "sms", "branch", "call_center"]


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
    arbitration: Literal["propensity", "uplift"] = Field(
        default="propensity", description="How offers are valued: propensity, P(accept) x value; uplift, the "
                                          "incremental value max(P(accept) - P(acquire unprompted), 0) x value, "
                                          "P(acquire unprompted) being the next-best-product model's probability.")
    explore_share: float = Field(default=0.1, ge=0, le=1)
    uniform_share: float = Field(default=0.0, ge=0, le=1,
                                 description="Part of explore_share ranked uniformly at random: every allowed offer "
                                             "then has an exact propensity of at least uniform_share / n.")
    propensity_samples: int = Field(default=256, ge=16, le=100_000)
    seed: int = 42
    prior: BanditPrior = Field(default_factory=BanditPrior)
    max_step_odds: float | None = Field(
        default=1.5, gt=1, description="The most one reward may change any offer's odds of acceptance, for any "
                                       "customer, channel or moment (a factor; null: the full Laplace step).")
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
