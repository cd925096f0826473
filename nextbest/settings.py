"""Where things are: the project folder, its configs, the work directory and the MLflow server.

One rule, printed by `nextbest info`:
- the **project** is the folder named by `$NEXTBEST_PROJECT`, else the nearest folder at or above
  the current directory that holds `nextbest.yaml` (written by `nextbest init`), else the nearest
  one at or above the work directory given by `--workdir` or `$NEXTBEST_HOME`, else none;
- a **config** `<name>.yaml` is the project's `configs/<name>.yaml` when the project has it, else
  the default that ships inside the package (`nextbest/configs/`);
- the **work directory** is `--workdir`, else `$NEXTBEST_HOME`, else the project's `workdir`
  (`nextbest.yaml`, default `work/` beside it), else `./.nextbest`;
- the **MLflow tracking URI** is `$NEXTBEST_MLFLOW_URI`, else the project's `mlflow_uri`, else the
  work directory's SQLite file (`mlflow/mlflow.db`).

Nothing here reads or creates anything at import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nextbest.constants import DEFAULT_WORKDIR, MLFLOW_URI_ENV, PROJECT_ENV, PROJECT_FILE, WORKDIR_ENV


def default_config_dir() -> Path:
    """The default configs that ship inside the package (read-only templates)."""
    import nextbest.configs

    return Path(nextbest.configs.__file__).resolve().parent


def find_project(start: str | os.PathLike | None = None) -> Path | None:
    """The project folder: `$NEXTBEST_PROJECT`, else the nearest folder at or above `start` (the
    current directory) that holds `nextbest.yaml`, else the nearest one at or above
    `$NEXTBEST_HOME` (the CLI sets it from `--workdir`), else None."""
    named = os.environ.get(PROJECT_ENV)
    if named:
        return Path(named).expanduser().resolve()
    starts = [Path(start or Path.cwd())]
    if os.environ.get(WORKDIR_ENV):
        starts.append(Path(os.environ[WORKDIR_ENV]).expanduser())
    for here in starts:
        here = here.resolve()
        for folder in (here, *here.parents):
            if (folder / PROJECT_FILE).is_file():
                return folder
    return None


def describe() -> dict[str, str]:
    """Where each setting comes from, as `nextbest info` prints it (reads only nextbest.yaml)."""
    project = find_project()
    how = ("none (package defaults)" if project is None else
           f"{PROJECT_ENV}" if os.environ.get(PROJECT_ENV) else "nextbest.yaml found at or above the current "
           "or work directory")
    if os.environ.get(WORKDIR_ENV):
        workdir_how = f"{WORKDIR_ENV} (or --workdir)"
    elif project is not None:
        workdir_how = "the project's nextbest.yaml"
    else:
        workdir_how = "default ./" + DEFAULT_WORKDIR
    paths = Paths.from_workdir()
    uri_how = (MLFLOW_URI_ENV if os.environ.get(MLFLOW_URI_ENV) else
               "the project's nextbest.yaml" if project_settings(project).get("mlflow_uri") else
               "the work directory's SQLite file")
    return {"project": str(project or "-"), "project_from": how, "workdir": str(paths.root),
            "workdir_from": workdir_how, "mlflow_uri": paths.mlflow_uri, "mlflow_uri_from": uri_how,
            "default_configs": str(default_config_dir())}


def project_settings(project: Path | None) -> dict:
    """The project's `nextbest.yaml` as a dict (empty without a project); a broken file is a ConfigError."""
    if project is None or not (project / PROJECT_FILE).is_file():
        return {}
    from nextbest.config import load_project_file

    return load_project_file(project / PROJECT_FILE)


def config_file(name: str) -> Path:
    """The config `name` (`products.yaml`, `adapters/santander_products.yaml`, ...): the project's
    when it has one, else the package default."""
    project = find_project()
    if project is not None and (project / "configs" / name).is_file():
        return project / "configs" / name
    return default_config_dir() / name


def project_relative(path: str | os.PathLike) -> Path:
    """A path from a config: absolute as given, else relative to the project folder (else the current directory)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (find_project() or Path.cwd()) / p


def resolve_workdir(workdir: str | os.PathLike | None = None) -> Path:
    """The work directory: the argument, else `$NEXTBEST_HOME`, else the project's, else `./.nextbest`."""
    chosen = workdir or os.environ.get(WORKDIR_ENV)
    if not chosen:
        project = find_project()
        if project is not None:
            chosen = project / project_settings(project).get("workdir", "work")
    return Path(chosen or DEFAULT_WORKDIR).expanduser().resolve()


def resolve_mlflow_uri(paths: "Paths") -> str:
    """`$NEXTBEST_MLFLOW_URI`, else the project's `mlflow_uri`, else the work directory's SQLite file."""
    return (os.environ.get(MLFLOW_URI_ENV) or project_settings(find_project()).get("mlflow_uri")
            or paths.local_mlflow_uri)


@dataclass(frozen=True)
class Paths:
    """Layout of a work directory. Building one creates nothing on disk."""

    root: Path

    @classmethod
    def from_workdir(cls, workdir: str | os.PathLike | None = None) -> "Paths":
        return cls(resolve_workdir(workdir))

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def truth(self) -> Path:
        return self.root / "truth"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def feast(self) -> Path:
        return self.root / "feast"

    @property
    def mlflow(self) -> Path:
        return self.root / "mlflow"

    @property
    def local_mlflow_uri(self) -> str:
        return f"sqlite:///{self.mlflow / 'mlflow.db'}"

    @property
    def mlflow_uri(self) -> str:
        """The tracking and registry URI in force (see `resolve_mlflow_uri`)."""
        return resolve_mlflow_uri(self)

    @property
    def mlflow_artifacts(self) -> Path:
        return self.mlflow / "artifacts"

    @property
    def baselines(self) -> Path:
        """LightGBM baselines' test scores per training set, so that re-evaluating does not refit them."""
        return self.root / "baselines"

    @property
    def models(self) -> Path:
        """Local cache of registered model artifacts, filled by serving."""
        return self.root / "models"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def events_db(self) -> Path:
        return self.root / "events.db"

    def ensure(self) -> "Paths":
        """Creates the directories; called by the CLI, never at import."""
        for path in (self.raw, self.truth, self.features, self.feast, self.mlflow, self.mlflow_artifacts,
                     self.models, self.reports):
            path.mkdir(parents=True, exist_ok=True)
        return self


def writable_dir(path: Path) -> str | None:
    """Why files cannot be written durably in the directory `path`, or None when they can."""
    if not path.exists():
        return f"directory {path} does not exist"
    if not path.is_dir():
        return f"{path} is not a directory"
    probe = path / f".write-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"x")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        return f"directory {path} is not writable ({exc.strerror})"
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return None
