"""Versions of the model feature services that include the bank's own feature tables.

A model's feature service is fixed once a champion is trained on it: serving reads exactly the
features it names. So when `configs/features.yaml` changes what a model reads (a table or a column
added or removed), `features apply` adds a new version, `<model's service stem>_bank_v<N>`, and keeps
every earlier one applied; training uses the newest (`feature_service_for`), and each champion keeps
reading the version it was trained on. The versions are recorded in `feast/bank_feature_services.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nextbest.constants import CHURN_FEATURE_SERVICE, NBP_FEATURE_SERVICE
from nextbest.io import write_json
from nextbest.settings import Paths

BASE_SERVICES = {"nbp": NBP_FEATURE_SERVICE, "churn": CHURN_FEATURE_SERVICE}
_STEMS = {"nbp": "next_best_product", "churn": "churn"}
RECORD = "bank_feature_services.json"


@dataclass(frozen=True)
class ServiceVersion:
    """One version: the model's base service plus the bank tables it reads, each with its columns' kinds
    and TTL (`spec`: table -> {"columns": {column: kind}, "ttl_days": days or None}); a change to any of
    them is a new version, since a champion reads its inputs as they were."""

    name: str
    model: str
    spec: dict[str, dict]

    @property
    def tables(self) -> dict[str, list[str]]:
        """Table -> the columns the version reads."""
        return {table: list(s["columns"]) for table, s in self.spec.items()}

    def to_json(self) -> dict:
        return {"name": self.name, "model": self.model, "base": BASE_SERVICES[self.model], "tables": self.spec}


@dataclass(frozen=True)
class ServiceRecord:
    """Every version applied so far, and which one each model trains on now (None: its base service)."""

    versions: tuple[ServiceVersion, ...] = ()
    current: tuple[tuple[str, str | None], ...] = ()
    unavailable: tuple[tuple[str, str], ...] = ()  # versions left out at the last apply, and why

    def current_for(self, model: str) -> str | None:
        return dict(self.current).get(model)

    def with_tables(self, wanted: dict[str, dict[str, dict]]) -> "ServiceRecord":
        """The record after applying `wanted` (model -> {table: {"columns": {column: kind}, "ttl_days": ...}}): a
        model whose tables differ from its newest version's gets a new version; a model with no table trains on
        its base service."""
        versions, current = list(self.versions), {}
        for model in BASE_SERVICES:
            tables = wanted.get(model) or {}
            if not tables:
                current[model] = None
                continue
            mine = [v for v in versions if v.model == model]
            if mine and mine[-1].spec == tables:
                current[model] = mine[-1].name
                continue
            version = ServiceVersion(f"{_STEMS[model]}_bank_v{len(mine) + 1}", model, tables)
            versions.append(version)
            current[model] = version.name
        return ServiceRecord(tuple(versions), tuple(sorted(current.items())), self.unavailable)

    def to_json(self) -> dict:
        return {"versions": [v.to_json() for v in self.versions], "current": dict(self.current),
                "unavailable": dict(self.unavailable)}


def record_path(paths: Paths) -> Path:
    return paths.feast / RECORD


def read_record(paths: Paths) -> ServiceRecord:
    """The work directory's record (empty when no bank table was ever applied)."""
    path = record_path(paths)
    if not path.exists():
        return ServiceRecord()
    try:
        data = json.loads(path.read_text())
        versions = tuple(ServiceVersion(v["name"], v["model"], {k: {"columns": dict(t["columns"]),
                                                                    "ttl_days": t["ttl_days"]}
                                                                for k, t in v["tables"].items()})
                         for v in data["versions"])
        current = tuple(sorted((str(k), v) for k, v in data["current"].items()))
        unavailable = tuple(sorted((str(k), str(v)) for k, v in data.get("unavailable", {}).items()))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: damaged ({type(exc).__name__}: {exc}); run `nextbest features apply` again "
                         "after restoring it from a backup") from None
    return ServiceRecord(versions, current, unavailable)


def write_record(paths: Paths, record: ServiceRecord) -> None:
    write_json(record_path(paths), record.to_json())


def table_spec(table) -> dict:
    """A declared table (`nextbest.config.BankTable`) as a version records it."""
    ttl = table.ttl_days or (None if table.as_of else 31)
    return {"columns": dict(table.columns), "ttl_days": ttl}


def read_columns(record: ServiceRecord) -> dict[str, tuple[str, str]]:
    """Every bank column a recorded version reads -> (its table, the newest version reading it)."""
    out: dict[str, tuple[str, str]] = {}
    for version in record.versions:
        for table, columns in version.tables.items():
            out.update({c: (table, version.name) for c in columns})
    return out


def feature_service_for(paths: Paths, model: str) -> str:
    """The feature service `model` trains on: the newest version with the bank's tables, else its base."""
    return read_record(paths).current_for(model) or BASE_SERVICES[model]
