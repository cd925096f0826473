"""MLflow tracking and model registry: the work directory's (SQLite backend, local artifacts), or a
shared MLflow tracking server (`NEXTBEST_MLFLOW_URI` or the project's `mlflow_uri`, see
`nextbest.settings`), whose artifact store then holds the models.

Models are registered from plain checkpoint directories (`weights.pt` + `model.json`), not
from a pickled MLflow flavour, so loading a registered model never unpickles code.

Aliases: every new version becomes `challenger`; `champion` is what serving loads. Promotion
history is kept in the registered model's `champion_history` tag so `rollback` can undo it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from nextbest.constants import CHAMPION_ALIAS
from nextbest.settings import Paths

log = logging.getLogger(__name__)
MODEL_ARTIFACT_PATH = "model"
CHALLENGER_ALIAS = "challenger"
HISTORY_TAG = "champion_history"


def _mlflow():
    # MLflow is imported lazily: it is slow to import and the service imports this module.
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    return mlflow


def is_remote(uri: str) -> bool:
    """True for a tracking server (http, https, databricks), False for a local database or folder."""
    return uri.split(":", 1)[0] in ("http", "https", "databricks")


def tracking(paths: Paths):
    """Points MLflow at the registry in force (see `nextbest.settings.resolve_mlflow_uri`) and returns the module."""
    mlflow = _mlflow()
    uri = paths.mlflow_uri
    if not is_remote(uri):
        paths.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow


def experiment_id(paths: Paths, name: str) -> str:
    mlflow = tracking(paths)
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    if is_remote(paths.mlflow_uri):  # the server's artifact store holds the runs' files
        return mlflow.create_experiment(name)
    return mlflow.create_experiment(name, artifact_location=(paths.mlflow_artifacts / name).as_uri())


def _cache_dir(paths: Paths, name: str, version: str) -> Path:
    """Where a registered version's files are kept locally: per registry, so versions of two
    registries (the work dir's own and a shared server) never mix."""
    uri = paths.mlflow_uri
    if not is_remote(uri):
        return paths.models / name / version
    import hashlib

    return paths.models / f"registry-{hashlib.sha256(uri.encode()).hexdigest()[:12]}" / name / version


def register(paths: Paths, name: str, run_id: str, alias: str = CHALLENGER_ALIAS) -> str:
    """Registers the run's `model/` artifact directory as a new version of `name` with `alias`.

    Returns:
        The new version number as a string.
    """
    client = tracking(paths).MlflowClient()
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name)
    source = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT_PATH}"
    version = client.create_model_version(name, source=source, run_id=run_id)
    client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def alias_version(paths: Paths, name: str, alias: str = CHAMPION_ALIAS) -> str | None:
    """Version behind `name@alias`, or None if the model or alias does not exist."""
    mlflow = tracking(paths)
    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def _history(client, name: str) -> list[dict]:
    tags = client.get_registered_model(name).tags
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def promote(paths: Paths, name: str, version: str, reason: str) -> str | None:
    """Makes `version` the champion; returns the previous champion's version (or None)."""
    mlflow = tracking(paths)
    client = mlflow.MlflowClient()
    try:
        client.get_model_version(name, str(version))
    except mlflow.exceptions.MlflowException:
        raise LookupError(f"model '{name}' has no version {version!r}") from None
    previous = alias_version(paths, name)
    client.set_registered_model_alias(name, CHAMPION_ALIAS, str(version))
    history = _history(client, name)
    history.append({"version": str(version), "previous": previous, "reason": reason, "at": time.time()})
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-50:]))
    client.set_model_version_tag(name, str(version), "promoted_reason", reason)
    return previous


def rollback(paths: Paths, name: str) -> str:
    """Restores the champion before the last promotion; returns the restored version.

    Raises:
        LookupError: there is no earlier champion to go back to.
    """
    client = tracking(paths).MlflowClient()
    history = _history(client, name) if client.search_registered_models(filter_string=f"name = '{name}'") else []
    if not history or history[-1]["previous"] is None:
        raise LookupError(f"model '{name}': no earlier champion to roll back to")
    last = history.pop()
    client.set_registered_model_alias(name, CHAMPION_ALIAS, last["previous"])
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    client.set_model_version_tag(name, last["version"], "rolled_back", "true")
    return last["previous"]


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    run_id: str
    local_dir: Path


def fetch_version(paths: Paths, name: str, version: str) -> RegisteredModel:
    """Downloads a registered version's checkpoint into `<workdir>/models/<name>/<version>/`."""
    mlflow = tracking(paths)
    mv = mlflow.MlflowClient().get_model_version(name, str(version))
    target = _cache_dir(paths, name, str(mv.version))
    if not (target / "model.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # Download next to the target, then rename: a crash never leaves a half-copied model.
        tmp = Path(tempfile.mkdtemp(prefix=f".{mv.version}.", dir=target.parent))
        try:
            # `models:/name/version` downloads the files directly into dst_path.
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}", dst_path=str(tmp))
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return RegisteredModel(name, str(mv.version), mv.run_id, target)


def load_pinned(models_dir: Path, name: str) -> RegisteredModel:
    """A checkpoint packed with its version (`nextbest build`): `<models_dir>/<name>/` and `pinned.json`.

    Raises:
        LookupError: the folder has no such model.
    """
    index = Path(models_dir) / "pinned.json"
    pinned = json.loads(index.read_text()) if index.is_file() else {}
    if name not in pinned or not (Path(models_dir) / name / "model.json").is_file():
        raise LookupError(f"{models_dir}: no pinned model '{name}'")
    return RegisteredModel(name, str(pinned[name]["version"]), pinned[name]["run_id"], Path(models_dir) / name)


def fetch_alias(paths: Paths, name: str, alias: str = CHAMPION_ALIAS) -> RegisteredModel:
    """Downloads the checkpoint behind `name@alias` and returns where it is.

    Raises:
        LookupError: the model or alias is not registered.
    """
    version = alias_version(paths, name, alias)
    if version is None:
        raise LookupError(f"no model '{name}' with alias '{alias}' in {paths.mlflow_uri}")
    return fetch_version(paths, name, version)
