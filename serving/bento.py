"""`nextbest build`: a BentoML Bento that carries the code, the project's configs and the champion
models pinned by version, so that `bentoml serve <tag>` (or the OCI image from `bentoml
containerize <tag>`) answers `/recommend` from any directory.

Inside the Bento (its `src/`):

    service.py         points the service at the bundled configs and models, then imports it
    nextbest/          the package's code (every part) and default configs
    project/           the project's nextbest.yaml and configs/*.yaml in force at build time
    models/<name>/     each champion's checkpoint (model.json, weights.npz, weights.pt); models/pinned.json
                       its version and the SHA-256 of its files

What stays outside is the work directory (`NEXTBEST_HOME`): the Feast registry and online store
(or a Redis named in its feature_store.yaml), the fallback table and the decision log, which the
service reads and writes at run time.
"""

from __future__ import annotations

import importlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nextbest.constants import CHURN_MODEL_NAME, MODELS_DIR_ENV, NBP_MODEL_NAME, PROJECT_ENV, PROJECT_FILE
from nextbest.settings import Paths, config_file, find_project

BENTO_NAME = "nextbest"
# The package's parts; in a source checkout each is a top-level folder mapped into `nextbest`.
PARTS = ("simulation", "features", "feature_repo", "training", "serving", "monitoring", "configs")
SERVED_MODELS = (NBP_MODEL_NAME, CHURN_MODEL_NAME)

SHIM = '''\
"""The nextbest decision service, as packed by `nextbest build`: bundled configs and pinned models."""

import os
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# Always the Bento's own configs and models, whatever the environment says: what was built is served.
os.environ["{project_env}"] = str(_HERE / "project")
os.environ["{models_env}"] = str(_HERE / "models")

from nextbest.serving.service import NextBest  # noqa: E402  (reads the two settings above when it starts)

__all__ = ["NextBest"]
'''


class BuildError(ValueError):
    """The Bento cannot be built; the message says what is missing."""


@dataclass(frozen=True)
class Built:
    tag: str
    path: Path
    models: dict[str, str]  # name -> pinned version


def _copy_package(target: Path) -> None:
    """Copies the installed package's code and data (not caches) to `target/nextbest`, part by part:
    in an editable install the parts live in separate folders."""
    def ignore(_dir: str, names: list[str]) -> set[str]:
        return {n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo"))}

    root = Path(importlib.import_module("nextbest").__file__).resolve().parent
    shutil.copytree(root, target / "nextbest", ignore=ignore)
    for part in PARTS:
        where = Path(importlib.import_module(f"nextbest.{part}").__file__).resolve().parent
        dest = target / "nextbest" / part
        if not dest.exists():
            shutil.copytree(where, dest, ignore=ignore)


def _copy_project(target: Path) -> None:
    """The configs in force (the project's, else the defaults) and nextbest.yaml, to `target/project`."""
    from nextbest.config import CONFIG_NAMES

    configs = target / "project" / "configs"
    configs.mkdir(parents=True)
    for name in (*CONFIG_NAMES, "adapters/santander_products.yaml"):
        (configs / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(config_file(name), configs / name)
    project = find_project()
    if project is not None and (project / PROJECT_FILE).is_file():
        shutil.copyfile(project / PROJECT_FILE, target / "project" / PROJECT_FILE)


def _pin_models(paths: Paths, target: Path, versions: dict[str, str] | None = None) -> dict[str, str]:
    """Copies each served model's checkpoint (the champion, or the version asked for) to `target/models`."""
    from nextbest.training import registry

    pinned = {}
    for name in SERVED_MODELS:
        wanted = (versions or {}).get(name)
        version = wanted or registry.alias_version(paths, name)
        if version is None:
            raise BuildError(f"no champion for model '{name}' in {paths.mlflow_uri}: train it first "
                             f"(nextbest train {name}) or name a version (--{name}-version)")
        try:
            model = registry.fetch_version(paths, name, version)
        except Exception as exc:  # noqa: BLE001 - MLflow raises its own types for a missing version
            raise BuildError(f"model '{name}' version {version}: not found in {paths.mlflow_uri} ({exc})") from None
        shutil.copytree(model.local_dir, target / "models" / name)
        pinned[name] = {"version": model.version, "run_id": model.run_id, "registry": paths.mlflow_uri,
                        registry.SHA256_TAG: registry.file_digests(target / "models" / name)}
    (target / "models" / "pinned.json").write_text(json.dumps(pinned, indent=2))
    return {name: p["version"] for name, p in pinned.items()}


def _requirements() -> list[str]:
    """The package's own run-time requirements, as its metadata declares them (extras left out)."""
    from importlib.metadata import requires

    return [r for r in (requires("nextbest") or []) if "extra ==" not in r]


def build(paths: Paths, versions: dict[str, str] | None = None, version: str | None = None) -> Built:
    """Builds the Bento into BentoML's store (`$BENTOML_HOME`, default ~/bentoml) and returns its tag.

    Raises:
        BuildError: a served model has no champion (or the version asked for does not exist).
    """
    import bentoml

    with tempfile.TemporaryDirectory(prefix="nextbest-bento-") as tmp:
        ctx = Path(tmp)
        pinned = _pin_models(paths, ctx, versions)  # first: a missing model fails before anything is copied
        _copy_package(ctx)
        _copy_project(ctx)
        (ctx / "service.py").write_text(SHIM.format(project_env=PROJECT_ENV, models_env=MODELS_DIR_ENV))
        labels = {f"{name}_version": v for name, v in pinned.items()}
        bento = bentoml.bentos.build(
            "service:NextBest", name=BENTO_NAME, version=version, build_ctx=str(ctx), labels=labels,
            description="nextbest decision service: POST /recommend, /feedback, /events",
            include=["service.py", "nextbest/**", "project/**", "models/**"],
            python={"packages": _requirements(), "lock_packages": False},
        )
    return Built(str(bento.tag), Path(bento.path), pinned)
