"""Outbound campaigns (`configs/campaigns.yaml`): who is in scope, which products, on which channels
within what capacity and cost, when to send, quotas and budget, control and exploration shares, and
the contact-pressure caps that apply on top of `rules.yaml`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nextbest.config.catalogue import Catalogue
from nextbest.config.loading import ConfigError, validated
from nextbest.config.policy import GLOBAL_HOLDOUT, BanditConfig, Channel, RulesConfig
from nextbest.config.segments import SegmentsConfig
from nextbest.settings import config_file

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
OUTBOUND = ("email", "push", "sms", "call_center", "branch")  # channels the bank can send on
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class ChannelPlan(BaseModel):
    """A channel's daily capacity (contacts) and its cost per contact (EUR)."""

    model_config = ConfigDict(extra="forbid")

    capacity: int = Field(ge=0)
    cost: float = Field(default=0.0, ge=0)


class Window(BaseModel):
    """When messages may go out: weekdays and send hours (local hour of day, 0-23)."""

    model_config = ConfigDict(extra="forbid")

    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS[:5]), min_length=1)
    hours: list[int] = Field(min_length=1)

    @field_validator("hours")
    @classmethod
    def _hours(cls, hours: list[int]) -> list[int]:
        bad = [h for h in hours if not 0 <= h <= 23]
        if bad:
            raise ValueError(f"send hours must be 0-23, got {bad}")
        return sorted(set(hours))


class Range(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min: float | None = Field(default=None, ge=0, le=1)
    max: float | None = Field(default=None, ge=0, le=1)


class Audience(BaseModel):
    """Who is in scope: every listed condition must hold (an empty audience is every customer)."""

    model_config = ConfigDict(extra="forbid")

    lifecycle: list[str] = Field(default_factory=list)
    segments: dict[str, list[str]] = Field(default_factory=dict, description="segment group -> allowed values")
    needs: list[str] = Field(default_factory=list, description="at least one of these need flags")
    value_tiers: list[str] = Field(default_factory=list)
    churn_risk: Range = Field(default_factory=Range)


class CampaignPlan(BaseModel):
    """One outbound campaign."""

    model_config = ConfigDict(extra="forbid")

    products: list[str] = Field(min_length=1)
    audience: Audience = Field(default_factory=Audience)
    channels: dict[Channel, ChannelPlan] = Field(min_length=1)
    quotas: dict[str, int] = Field(default_factory=dict, description="at most this many contacts per product a day")
    budget: float | None = Field(default=None, ge=0, description="total contact cost a day (EUR)")
    window: Window
    holdout_share: float = Field(default=0.1, ge=0, lt=1)
    explore_share: float = Field(default=0.05, ge=0, le=1)
    max_contacts_per_week: int | None = Field(default=None, ge=0,
                                              description="outbound contacts per customer in 7 days, all channels")

    @model_validator(mode="after")
    def _checks(self) -> "CampaignPlan":
        inbound = sorted(c for c in self.channels if c not in OUTBOUND)
        if inbound:
            raise ValueError(f"channels {inbound} are not outbound channels; use some of {list(OUTBOUND)}")
        negative = {p: q for p, q in self.quotas.items() if q < 0}
        if negative:
            raise ValueError(f"quotas must be >= 0, got {negative}")
        outside = sorted(set(self.quotas) - set(self.products))
        if outside:
            raise ValueError(f"quotas name products {outside} that are not in this campaign's products")
        return self


class CampaignsConfig(BaseModel):
    """`configs/campaigns.yaml`: the bank's outbound campaigns by name."""

    model_config = ConfigDict(extra="forbid")

    version: int
    salt: str = Field(default="campaign-v1", min_length=1, description="control groups and exploration draws")
    campaigns: dict[str, CampaignPlan] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _names(self) -> "CampaignsConfig":
        if GLOBAL_HOLDOUT in self.campaigns:
            raise ValueError(f"campaigns: {GLOBAL_HOLDOUT!r} is reserved for the global control group")
        return self


def load_campaigns(path: Path | None = None, catalogue: Catalogue | None = None,
                   segments: SegmentsConfig | None = None, rules: RulesConfig | None = None,
                   bandit: BanditConfig | None = None) -> CampaignsConfig:
    """Loads `configs/campaigns.yaml`; with the catalogue, segments, rules and policy, checks every product,
    segment group and value, need and channel consent it names, and that no campaign shares its name
    with a control group of bandit.yaml (a decision logs both under their names)."""
    path = path or config_file("campaigns.yaml")
    cfg = validated(CampaignsConfig, path)
    if bandit is not None:
        clash = sorted(set(cfg.campaigns) & set(bandit.holdout.campaigns))
        if clash:
            raise ConfigError(f"{path}: field campaigns: {clash} are also control groups in bandit.yaml "
                              "(holdout.campaigns); give the outbound campaign another name")
    for name, c in cfg.campaigns.items():
        where = f"{path}: field campaigns.{name}"
        if catalogue is not None:
            unknown = sorted({*c.products, *c.quotas} - set(catalogue.ids))
            if unknown:
                raise ConfigError(f"{where}.products: unknown product(s) {unknown} (not in products.yaml)")
        if segments is not None:
            _check_audience(c.audience, segments, f"{where}.audience")
        if rules is not None:
            consent = {"email", "push", "sms", "call_center"} - set(rules.channel_consent)
            missing = sorted(set(c.channels) & consent)
            if missing:
                raise ConfigError(f"{where}.channels: {missing} need a consent flag in rules.yaml channel_consent")
    return cfg


LIFECYCLES = ("prospect", "new", "active", "dormant", "former")


def _check_audience(audience: Audience, segments: SegmentsConfig, where: str) -> None:
    bad = sorted(set(audience.lifecycle) - set(LIFECYCLES))
    if bad:
        raise ConfigError(f"{where}.lifecycle: unknown state(s) {bad}; known: {list(LIFECYCLES)}")
    for group, values in audience.segments.items():
        if group not in segments.groups:
            raise ConfigError(f"{where}.segments: unknown segment group {group!r}; known: {sorted(segments.groups)}")
        g = segments.groups[group]
        known = {g.default, *(r.name for r in g.rules)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{where}.segments.{group}: unknown segment(s) {unknown}; known: {sorted(known)}")
    unknown = sorted(set(audience.needs) - set(segments.needs))
    if unknown:
        raise ConfigError(f"{where}.needs: unknown need(s) {unknown}; known: {sorted(segments.needs)}")
    tiers = {"top", "rest"}
    unknown = sorted(set(audience.value_tiers) - tiers)
    if unknown:
        raise ConfigError(f"{where}.value_tiers: unknown tier(s) {unknown}; known: {sorted(tiers)}")
