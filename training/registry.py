"""MLflow tracking and model registry on the work directory (SQLite backend, local artifacts).

Models are registered from plain checkpoint directories (`weights.pt` + `model.json`), not
from a pickled MLflow flavour, so loading a registered model never unpickles code.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nextbest.constants import CHAMPION_ALIAS
from nextbest.settings import Paths

log = logging.getLogger(__name__)
MODEL_ARTIFACT_PATH = "model"


def _mlflow():
    # MLflow is imported lazily: it is slow to import and the service imports this module.
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    import mlflow

    return mlflow


def tracking(paths: Paths):
    """Points MLflow at the work directory and returns the module."""
    mlflow = _mlflow()
    paths.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(paths.mlflow_uri)
    mlflow.set_registry_uri(paths.mlflow_uri)
    return mlflow


def experiment_id(paths: Paths, name: str) -> str:
    mlflow = tracking(paths)
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return mlflow.create_experiment(name, artifact_location=(paths.mlflow_artifacts / name).as_uri())


def register(paths: Paths, name: str, run_id: str, alias: str = CHAMPION_ALIAS) -> str:
    """Registers the run's `model/` artifact directory as a new version of `name` and sets `alias`.

    Returns:
        The new version number as a string.
    """
    mlflow = tracking(paths)
    client = mlflow.MlflowClient()
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name)
    source = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT_PATH}"
    version = client.create_model_version(name, source=source, run_id=run_id)
    client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    run_id: str
    local_dir: Path


def fetch_alias(paths: Paths, name: str, alias: str = CHAMPION_ALIAS) -> RegisteredModel:
    """Downloads the checkpoint behind `name@alias` into `<workdir>/models/` and returns where it is.

    Raises:
        LookupError: the model or alias is not registered.
    """
    mlflow = tracking(paths)
    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException as exc:
        raise LookupError(f"no model '{name}' with alias '{alias}' in {paths.mlflow_uri}: {exc.message}") from None
    target = paths.models / name / str(mv.version)
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
