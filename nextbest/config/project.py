"""The project file (`nextbest.yaml`) and the check of every config in force."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from nextbest.config.campaigns import load_campaigns
from nextbest.config.catalogue import load_catalogue
from nextbest.config.features import load_features_config
from nextbest.config.loading import validated
from nextbest.config.monitoring import load_monitoring
from nextbest.config.policy import load_bandit, load_rules
from nextbest.config.segments import load_segments
from nextbest.config.training import load_train_config
from nextbest.settings import config_file


class ProjectFile(BaseModel):
    """`nextbest.yaml`, the file that marks a project folder (written by `nextbest init`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="The project's name, shown by `nextbest info`.")
    workdir: str = Field(default="work", min_length=1,
                         description="The work directory, relative to the project folder (or absolute).")
    mlflow_uri: str | None = Field(default=None, description="A shared MLflow tracking server (http://HOST:PORT) "
                                   "for training, the registry, serving and the monitor; default: the work "
                                   "directory's own SQLite file. The environment's NEXTBEST_MLFLOW_URI wins.")


def load_project_file(path: Path) -> dict:
    return validated(ProjectFile, path).model_dump()


# The configs every stage reads, in the order they are checked (a later one may name an earlier one).
CONFIG_NAMES = ("products.yaml", "segments.yaml", "bandit.yaml", "rules.yaml", "nbp.yaml", "churn.yaml",
                "campaign.yaml", "monitoring.yaml", "features.yaml", "campaigns.yaml")


def validate_all() -> dict[str, Path]:
    """Loads and cross-checks every config in force (the project's, else the defaults).

    Returns:
        config name -> the file that was read.

    Raises:
        ConfigError: the first invalid file, naming the file, field and value.
    """
    from nextbest.settings import find_project, project_settings

    project_settings(find_project())  # nextbest.yaml itself
    catalogue = load_catalogue()
    segments = load_segments(catalogue=catalogue)
    bandit = load_bandit(catalogue=catalogue)
    rules = load_rules(catalogue=catalogue, bandit=bandit)
    for task in ("nbp", "churn", "campaign"):
        load_train_config(task, catalogue=catalogue)
    load_monitoring()
    load_features_config()
    load_campaigns(catalogue=catalogue, segments=segments, rules=rules, bandit=bandit)
    return {name: config_file(name) for name in CONFIG_NAMES}
