"""The bank's own customer feature tables (`configs/features.yaml`)."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nextbest.config.loading import ConfigError, validated
from nextbest.settings import config_file

# Feast view and column names: lower-case identifiers, so that they are valid in SQL and Redis keys alike.
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
MODELS = ("nbp", "churn")


class SqlSource(BaseModel):
    """A table or a query in a database reached through SQLAlchemy."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, description="SQLAlchemy URL, e.g. postgresql://user@host:5432/bank; a password "
                     "is best left out and given by the driver's environment (PGPASSWORD).")
    table: str | None = Field(default=None, description="A table, optionally schema-qualified (`dwh.aggregates`).")
    query: str | None = Field(default=None, description="A SELECT whose rows are the table.")

    @model_validator(mode="after")
    def _one_of(self) -> "SqlSource":
        if (self.table is None) == (self.query is None):
            raise ValueError("give either `table` or `query`")
        return self


class BankTable(BaseModel):
    """One feature table of the bank's: one row per customer (and date), its columns' kinds declared."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The Feast feature view's name (lower-case letters, digits, _).")
    path: Path | None = Field(default=None, description="A parquet or CSV file; a relative path is read from "
                              "the project folder (else the current directory).")
    sql: SqlSource | None = Field(default=None, description="Or a database table or query.")
    timestamp: str | None = Field(default=None, description="The column holding the date each row describes; "
                                  "a row feeds the snapshots at or after it, within `ttl_days`.")
    as_of: date | None = Field(default=None, description="Or one date for the whole table (a one-off extract); "
                               "it feeds every snapshot at or after it.")
    ttl_days: int | None = Field(default=None, ge=1, description="How long a row stays valid (default: 31 days "
                                 "with `timestamp`, for ever with `as_of`).")
    columns: dict[str, Literal["numeric", "categorical"]] = Field(
        min_length=1, description="The feature columns and their kinds; other columns of the source are ignored.")
    models: list[Literal["nbp", "churn"]] = Field(default_factory=lambda: list(MODELS),
                                                  description="The models that read the table.")
    encoding: str = Field(default="utf-8", description="A CSV file's text encoding.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("must be lower-case letters, digits and _, starting with a letter")
        return v

    @field_validator("columns")
    @classmethod
    def _columns(cls, v: dict) -> dict:
        bad = [c for c in v if not _NAME.match(c)]
        if bad:
            raise ValueError(f"column name(s) {bad} must be lower-case letters, digits and _, starting with a letter")
        return v

    @model_validator(mode="after")
    def _source_and_time(self) -> "BankTable":
        if (self.path is None) == (self.sql is None):
            raise ValueError("give either `path` or `sql`")
        if (self.timestamp is None) == (self.as_of is None):
            raise ValueError("give either `timestamp` (a column) or `as_of` (one date for the whole table)")
        if self.timestamp is not None and self.timestamp in self.columns:
            raise ValueError(f"the timestamp column {self.timestamp!r} cannot also be a feature")
        if "customer_id" in self.columns:
            raise ValueError("customer_id is the key, not a feature")
        return self

    def source_path(self) -> Path | None:
        """The file, a relative path read from the project folder (else the current directory)."""
        from nextbest.settings import project_relative

        return None if self.path is None else project_relative(self.path)

    def describe(self) -> str:
        if self.path is not None:
            return str(self.source_path())
        return f"{self.sql.url.split('@')[-1]} {'table ' + self.sql.table if self.sql.table else 'query'}"


class FeaturesConfig(BaseModel):
    """`configs/features.yaml`: the bank's own feature tables."""

    model_config = ConfigDict(extra="forbid")

    tables: list[BankTable] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> "FeaturesConfig":
        names = [t.name for t in self.tables]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"table name(s) {twice} appear more than once")
        seen: dict[str, str] = {}
        for t in self.tables:
            for c in t.columns:
                if c in seen:
                    raise ValueError(f"column {c!r} is in both {seen[c]!r} and {t.name!r}: feature names must be "
                                     "unique across tables")
                seen[c] = t.name
        return self

    def for_model(self, model: str) -> list[BankTable]:
        return [t for t in self.tables if model in t.models]


def load_features_config(path: Path | None = None) -> FeaturesConfig:
    """Loads `configs/features.yaml` (the project's, else the package default, which declares no table)."""
    path = path or config_file("features.yaml")
    cfg = validated(FeaturesConfig, path)
    reserved = {"event_timestamp", "customer_id", "snapshot_date"}
    for t in cfg.tables:
        clash = sorted(reserved & set(t.columns))
        if clash:
            raise ConfigError(f"{path}: table {t.name!r}: column(s) {clash} are reserved names")
    return cfg
