"""MLflow tracking and model registry: the work directory's (SQLite backend, local artifacts), or a
shared MLflow tracking server (`NEXTBEST_MLFLOW_URI` or the project's `mlflow_uri`, see
`nextbest.settings`), whose artifact store then holds the models.

Models are registered from plain checkpoint directories (`model.json`, `weights.npz`, `weights.pt`), not
from a pickled MLflow flavour, so loading a registered model never unpickles code.

Aliases: every new version becomes `challenger`; `champion` is what serving loads. Every change of
champion (who, when, why, from which version) is kept in the registered model's `champion_history`
tag, oldest first, so `rollback` can undo the latest promotion and an auditor can read them all.
"""

from __future__ import annotations

import json
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
CHALLENGER_ALIAS = "challenger"
HISTORY_TAG = "champion_history"
SHA256_TAG = "sha256"  # JSON {file: SHA-256} of a version's files, recorded at registration
HISTORY_MAX_CHARS = 90_000  # MLflow keeps registered-model tags of up to 100,000 characters


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


def file_digests(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under `directory`, by path relative to it."""
    import hashlib

    digests = {}
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file():
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            digests[path.relative_to(directory).as_posix()] = h.hexdigest()
    return digests


def corrupted(directory: Path, expected: dict[str, str]) -> list[str]:
    """The files whose SHA-256 differs from `expected` (missing ones included), sorted."""
    found = file_digests(directory)
    return sorted(f for f, digest in expected.items() if found.get(f) != digest)


def register(paths: Paths, name: str, run_id: str, alias: str = CHALLENGER_ALIAS) -> str:
    """Registers the run's `model/` artifact directory as a new version of `name` with `alias`, and
    records the SHA-256 of each of its files in the version's `sha256` tag (checked at every load).

    Returns:
        The new version number as a string.
    """
    mlflow = tracking(paths)
    client = mlflow.MlflowClient()
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name)
    source = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT_PATH}"
    with tempfile.TemporaryDirectory(prefix="nextbest-register-") as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=MODEL_ARTIFACT_PATH, dst_path=tmp)
        digests = file_digests(Path(local))
    version = client.create_model_version(name, source=source, run_id=run_id, tags={SHA256_TAG: json.dumps(digests)})
    client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def alias_version(paths: Paths, name: str, alias: str = CHAMPION_ALIAS) -> str | None:
    """Version behind `name@alias`, or None if the model or alias does not exist."""
    mlflow = tracking(paths)
    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def _actor() -> str:
    """Who changes the champion: `$NEXTBEST_ACTOR` (set it in automation), else the login name."""
    import getpass

    try:
        return os.environ.get("NEXTBEST_ACTOR") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _iso(at) -> str:
    """A history time as ISO 8601 UTC (entries of older registries hold epoch seconds)."""
    from datetime import datetime, timezone

    if isinstance(at, (int, float)):
        return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")
    return str(at)


def _history(client, name: str) -> list[dict]:
    tags = client.get_registered_model(name).tags
    events = json.loads(tags.get(HISTORY_TAG, "[]"))
    return [{"action": "promote", **e, "at": _iso(e.get("at"))} for e in events]


def champion_history(paths: Paths, name: str) -> list[dict]:
    """Every change of `name`'s champion, oldest first: action (promote or rollback), version, previous,
    reason, at (ISO 8601 UTC) and by."""
    client = tracking(paths).MlflowClient()
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        return []
    return _history(client, name)


def _record(client, name: str, history: list[dict], **event) -> None:
    from datetime import datetime, timezone

    history.append({**event, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "by": _actor()})
    text = json.dumps(history)
    while len(text) > HISTORY_MAX_CHARS and len(history) > 1:  # the registry's limit on a tag: oldest go first
        history.pop(0)
        text = json.dumps(history)
    client.set_registered_model_tag(name, HISTORY_TAG, text)


def _undo_stack(history: list[dict]) -> list[dict]:
    """The promotions still in force: each rollback undoes the latest one not yet undone."""
    stack: list[dict] = []
    for event in history:
        if event["action"] == "promote":
            stack.append(event)
        elif event["action"] == "rollback" and stack:
            stack.pop()
    return stack


def promote(paths: Paths, name: str, version: str, reason: str) -> str | None:
    """Makes `version` the champion and records it; returns the previous champion's version (or None).

    A version that is already champion changes nothing and records nothing: the returned previous
    version is then `version` itself.
    """
    mlflow = tracking(paths)
    client = mlflow.MlflowClient()
    try:
        client.get_model_version(name, str(version))
    except mlflow.exceptions.MlflowException:
        raise LookupError(f"model '{name}' has no version {version!r}") from None
    previous = alias_version(paths, name)
    if previous == str(version):
        return previous
    client.set_registered_model_alias(name, CHAMPION_ALIAS, str(version))
    _record(client, name, _history(client, name), action="promote", version=str(version), previous=previous,
            reason=reason)
    client.set_model_version_tag(name, str(version), "promoted_reason", reason)
    return previous


def rollback(paths: Paths, name: str, reason: str = "rolled back by hand") -> str:
    """Restores the champion before the last promotion still in force, and records it; returns the
    restored version.

    Raises:
        LookupError: there is no earlier champion to go back to.
    """
    client = tracking(paths).MlflowClient()
    history = _history(client, name) if client.search_registered_models(filter_string=f"name = '{name}'") else []
    stack = _undo_stack(history)
    if not stack or stack[-1]["previous"] is None:
        raise LookupError(f"model '{name}': no earlier champion to roll back to")
    current, restored = alias_version(paths, name), stack[-1]["previous"]
    client.set_registered_model_alias(name, CHAMPION_ALIAS, restored)
    _record(client, name, history, action="rollback", version=restored, previous=current, reason=reason)
    if current is not None and current != restored:
        client.set_model_version_tag(name, current, "rolled_back", "true")
    return restored


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    run_id: str
    local_dir: Path
    sha256: dict[str, str] | None = None  # file -> SHA-256 recorded at registration (None: not recorded)


def fetch_version(paths: Paths, name: str, version: str, scratch: Path | None = None) -> RegisteredModel:
    """Downloads a registered version's checkpoint into `<workdir>/models/<name>/<version>/`, or reuses
    the copy there once its files match the SHA-256 recorded at registration.

    A cached copy that does not match is downloaded again; a download that does not match either
    raises. With `scratch` (a reader that must not write to the work directory), a download goes
    there instead, and the work directory's copy is left as it is.

    Raises:
        ValueError: the registry's files do not match their recorded SHA-256.
    """
    mlflow = tracking(paths)
    mv = mlflow.MlflowClient().get_model_version(name, str(version))
    expected = json.loads(mv.tags[SHA256_TAG]) if SHA256_TAG in (mv.tags or {}) else None
    target = _cache_dir(paths, name, str(mv.version))
    if scratch is not None and not ((target / "model.json").exists()
                                    and (expected is None or not corrupted(target, expected))):
        target = Path(scratch) / name / str(mv.version)
    if (target / "model.json").exists() and expected is not None and corrupted(target, expected):
        log.warning("model '%s' v%s: the cached files %s do not match their SHA-256; downloading again",
                    name, mv.version, corrupted(target, expected))
        shutil.rmtree(target, ignore_errors=True)
    if not (target / "model.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # Download next to the target, then rename: a crash never leaves a half-copied model.
        tmp = Path(tempfile.mkdtemp(prefix=f".{mv.version}.", dir=target.parent))
        try:
            # `models:/name/version` downloads the files directly into dst_path.
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}", dst_path=str(tmp))
            bad = corrupted(tmp, expected) if expected is not None else []
            if bad:
                raise ValueError(f"model '{name}' v{mv.version} in {paths.mlflow_uri}: files {bad} do not match "
                                 "the SHA-256 recorded at registration; refusing to load them")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return RegisteredModel(name, str(mv.version), mv.run_id, target, expected)


def load_pinned(models_dir: Path, name: str) -> RegisteredModel:
    """A checkpoint packed with its version (`nextbest build`): `<models_dir>/<name>/` and `pinned.json`.

    Raises:
        LookupError: the folder has no such model.
        ValueError: its files do not match the SHA-256 recorded in `pinned.json`.
    """
    index = Path(models_dir) / "pinned.json"
    pinned = json.loads(index.read_text()) if index.is_file() else {}
    if name not in pinned or not (Path(models_dir) / name / "model.json").is_file():
        raise LookupError(f"{models_dir}: no pinned model '{name}'")
    expected = pinned[name].get(SHA256_TAG)
    bad = corrupted(Path(models_dir) / name, expected) if expected else []
    if bad:
        raise ValueError(f"{models_dir}/{name}: files {bad} do not match the SHA-256 recorded when the Bento was "
                         "built; refusing to load them")
    return RegisteredModel(name, str(pinned[name]["version"]), pinned[name]["run_id"], Path(models_dir) / name,
                           expected)


def fetch_alias(paths: Paths, name: str, alias: str = CHAMPION_ALIAS, scratch: Path | None = None) -> RegisteredModel:
    """Downloads the checkpoint behind `name@alias` (see `fetch_version`) and returns where it is.

    Raises:
        LookupError: the model or alias is not registered.
    """
    version = alias_version(paths, name, alias)
    if version is None:
        raise LookupError(f"no model '{name}' with alias '{alias}' in {paths.mlflow_uri}")
    return fetch_version(paths, name, version, scratch)
