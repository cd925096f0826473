"""Paths of one work directory; every stage reads and writes only under it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nextbest.constants import DEFAULT_WORKDIR, WORKDIR_ENV

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"


def resolve_workdir(workdir: str | os.PathLike | None = None) -> Path:
    """Returns the work directory: the argument, else `$NEXTBEST_HOME`, else `./.nextbest`."""
    chosen = workdir or os.environ.get(WORKDIR_ENV) or DEFAULT_WORKDIR
    return Path(chosen).expanduser().resolve()


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
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.mlflow / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.mlflow / "artifacts"

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
