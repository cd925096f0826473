"""The product catalogue (`configs/products.yaml`): products, their category, margin and eligibility."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nextbest.config.loading import validated
from nextbest.settings import config_file

Category = Literal["account", "card", "deposit", "loan", "investment", "insurance", "service"]


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


def load_catalogue(path: Path | None = None) -> Catalogue:
    return validated(Catalogue, path or config_file("products.yaml"))
