"""A bank's project folder: its configs and its work directory, apart from the installed code.

`nextbest init DIR` writes:

    DIR/nextbest.yaml     marks the folder as a project (name, work directory, optional MLflow server)
    DIR/configs/*.yaml    copies of the package defaults: the bank's own from then on
    DIR/work/             the work directory (raw tables, features, Feast, MLflow, events, reports)
    DIR/README.md         what to edit
    DIR/.gitignore        keeps work/ out of the bank's repository
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nextbest.constants import PROJECT_FILE
from nextbest.io import atomic_write
from nextbest.settings import default_config_dir

README = """\
# {name}: a nextbest project

Every `nextbest` command run in this folder (or below it, or with `NEXTBEST_PROJECT={root}`)
reads the configs here and works in `work/`. `nextbest info` prints what is in force.

| file | what to edit |
|---|---|
| `configs/products.yaml` | the product catalogue: ids, names, categories, margins, age limits, prerequisites. Adding, \
removing or renaming a product here flows through features, Feast, training, serving and monitoring; retrain both \
models after a change (`nextbest features build && nextbest features apply && nextbest features materialize && \
nextbest train nbp && nextbest train churn`). Products named in `bandit.yaml`, `rules.yaml` and `segments.yaml` must \
exist here (every command checks). |
| `configs/segments.yaml` | lifecycle thresholds, rule-based segments, needs, value tiers |
| `configs/rules.yaml` | consent per channel, credit cool-down, contact-frequency caps, rejection cool-down |
| `configs/bandit.yaml` | arbitration, exploration, non-product actions, cold start, control groups |
| `configs/nbp.yaml`, `configs/churn.yaml`, `configs/campaign.yaml` | model hyper-parameters and promotion margin |
| `configs/features.yaml` | your own customer feature tables (files or database queries) that the models read \
beside the built features: `nextbest features import`, then `features apply` and `features materialize` |
| `configs/campaigns.yaml` | outbound campaigns for `nextbest plan`: products, audience, channels with daily capacity \
and cost, quotas, budget, send window, control and exploration shares, contact caps |
| `configs/monitoring.yaml` | drift tests, KPI windows and the monitoring gate's limits |
| `configs/adapters/santander_products.yaml` | how the Santander extract's product flags map onto the catalogue |
| `nextbest.yaml` | `workdir` (default `work`), `mlflow_uri` (a shared MLflow tracking server, http://HOST:PORT) |

A config you delete falls back to the package default. An invalid one stops every command
before any work, naming the file, field and value.
"""


class ProjectExists(ValueError):
    """The target folder is not empty and --force was not given."""


@dataclass
class Project:
    root: Path
    files: list[Path] = field(default_factory=list)


def _default_files() -> list[Path]:
    """The default config files, relative to the defaults folder (YAML only, no package code)."""
    base = default_config_dir()
    return sorted(p.relative_to(base) for p in base.rglob("*.yaml"))


def init_project(directory: Path, name: str | None = None, force: bool = False) -> Project:
    """Writes a project folder (see the module docstring).

    Raises:
        ProjectExists: `directory` holds files and `force` is false.
    """
    root = Path(directory).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise ProjectExists(f"{root}: exists and is not a folder")
    if root.is_dir() and any(root.iterdir()) and not force:
        raise ProjectExists(f"{root}: folder is not empty; use --force to write the project files into it "
                            "(nextbest.yaml and configs/ are replaced, work/ is kept)")
    name = name or root.name
    base = default_config_dir()
    project = Project(root)
    contents: dict[Path, bytes] = {
        Path(PROJECT_FILE): yaml.safe_dump({"name": name, "workdir": "work"}, sort_keys=False).encode()
        + b"# mlflow_uri: http://mlflow.internal:5000   # a shared MLflow server instead of work/mlflow\n",
        Path("README.md"): README.format(name=name, root=root).encode(),
        Path(".gitignore"): b"work/\n",
    }
    for rel in _default_files():
        contents[Path("configs") / rel] = (base / rel).read_bytes()
    for rel, data in contents.items():
        atomic_write(root / rel, lambda tmp, data=data: Path(tmp).write_bytes(data))
        project.files.append(root / rel)
    (root / "work").mkdir(exist_ok=True)
    return project
