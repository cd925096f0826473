"""Reading a config file: YAML into a pydantic model, every problem a `ConfigError` that names the
file, the field and the value."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A configuration file is missing or invalid; the message names the file and field."""



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
