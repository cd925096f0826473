"""The Santander file's columns and the mapping of its 24 product flags onto the catalogue
(`configs/adapters/santander_products.yaml`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nextbest.config import Catalogue, ConfigError
from nextbest.settings import config_file

FLAGS = (
    "ind_ahor_fin_ult1", "ind_aval_fin_ult1", "ind_cco_fin_ult1", "ind_cder_fin_ult1", "ind_cno_fin_ult1",
    "ind_ctju_fin_ult1", "ind_ctma_fin_ult1", "ind_ctop_fin_ult1", "ind_ctpp_fin_ult1", "ind_deco_fin_ult1",
    "ind_deme_fin_ult1", "ind_dela_fin_ult1", "ind_ecue_fin_ult1", "ind_fond_fin_ult1", "ind_hip_fin_ult1",
    "ind_plan_fin_ult1", "ind_pres_fin_ult1", "ind_reca_fin_ult1", "ind_tjcr_fin_ult1", "ind_valo_fin_ult1",
    "ind_viv_fin_ult1", "ind_nomina_ult1", "ind_nom_pens_ult1", "ind_recibo_ult1",
)
PROFILE_COLUMNS = ("sexo", "age", "fecha_alta", "nomprov", "ind_actividad_cliente", "renta")
REQUIRED_COLUMNS = ("fecha_dato", "ncodpers", *PROFILE_COLUMNS, *FLAGS)
DEFAULT_MAPPING = "adapters/santander_products.yaml"  # a config name: the project's, else the package default


class SantanderMapping(BaseModel):
    """`configs/adapters/santander_products.yaml`: product flags -> product ids, `sexo` codes -> gender."""

    model_config = ConfigDict(extra="forbid")

    version: int
    products: dict[str, str | None]
    gender: dict[str, str] = Field(default_factory=dict)

    def matrix(self, product_ids: list[str]) -> np.ndarray:
        """bool [24 flags, n products]: True where a flag maps to a product (flags in `FLAGS` order)."""
        out = np.zeros((len(FLAGS), len(product_ids)), dtype=bool)
        pos = {p: j for j, p in enumerate(product_ids)}
        for i, flag in enumerate(FLAGS):
            target = self.products[flag]
            if target is not None:
                out[i, pos[target]] = True
        return out


def load_santander_mapping(catalogue: Catalogue, path: Path | None = None) -> SantanderMapping:
    """Loads the flag -> product mapping and checks it against the catalogue.

    Raises:
        ConfigError: the file is missing or invalid, a flag is missing or unknown, or a product
            id is not in `configs/products.yaml` (the message names the file and the key).
    """
    path = Path(path or config_file(DEFAULT_MAPPING))
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        mapping = SantanderMapping.model_validate(data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise ConfigError(f"{path}: field {where}: {first['msg']} (got {first.get('input')!r})") from None
    missing = [f for f in FLAGS if f not in mapping.products]
    if missing:
        raise ConfigError(f"{path}: field products: no mapping for flag(s) {missing} (map a flag to null to ignore it)")
    unknown = [f for f in mapping.products if f not in FLAGS]
    if unknown:
        raise ConfigError(f"{path}: field products: unknown flag(s) {unknown}; the flags are {list(FLAGS)}")
    ids = set(catalogue.ids)
    for flag, target in mapping.products.items():
        if target is not None and target not in ids:
            raise ConfigError(f"{path}: field products.{flag}: product_id {target!r} is not in configs/products.yaml")
    return mapping
