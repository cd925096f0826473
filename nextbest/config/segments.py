"""Segments (`configs/segments.yaml`): lifecycle thresholds, rule-based segment groups, need flags
and the value tier; the rules are conditions on feature columns."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nextbest.config.catalogue import Catalogue
from nextbest.config.loading import ConfigError, validated
from nextbest.settings import config_file


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
