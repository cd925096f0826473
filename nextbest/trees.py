"""The LightGBM model family's artifact: one gradient-boosted model per output in LightGBM's own text
format (`tree_<j>.txt`), listed in `trees.json`, beside the same `model.json` as the networks.

Loading reads text and JSON only (`lightgbm.Booster(model_str=...)`), so nothing is unpickled. An
output with too few positives to fit trees on is a constant: its training rate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.artifact import ModelMeta, Preprocessor

TREES_FILE = "trees.json"
FAMILY = "lightgbm"


def tree_matrix(pre: Preprocessor, df: pd.DataFrame | dict[str, list]) -> np.ndarray:
    """Features as the trees see them: raw numeric values (missing as NaN) then categories coded by the
    training vocabulary (0: not seen in training), float32 [n, n_numeric + n_categorical]."""
    if isinstance(df, pd.DataFrame):
        num = df[pre.numeric].to_numpy(dtype=np.float32, na_value=np.nan)
    else:
        n = len(next(iter(df.values())))
        num = np.array([[np.nan if v is None else v for v in df[c]] for c in pre.numeric],
                       dtype=np.float32).T.reshape(n, len(pre.numeric))
    cats = np.zeros((len(num), len(pre.categorical)), dtype=np.float32)
    for j, c in enumerate(pre.categorical):
        index = {v: i + 1 for i, v in enumerate(pre.vocabs[c])}
        cats[:, j] = [index.get(str(v), 0) for v in df[c]]
    return np.hstack([num, cats])


def tree_row(pre: Preprocessor, row: dict) -> np.ndarray:
    """`tree_matrix` of one row {feature: value}, shape [1, n]."""
    values = [np.nan if (v := row[c]) is None else v for c in pre.numeric]
    values += [pre.vocabs[c].index(str(row[c])) + 1 if str(row[c]) in pre.vocabs[c] else 0 for c in pre.categorical]
    return np.asarray([values], dtype=np.float32)


def predict_outputs(models: list, x: np.ndarray, **predict) -> np.ndarray:
    """[n, len(models)] probabilities of one booster (or a constant) per output; `predict` goes to each booster."""
    out = np.empty((len(x), len(models)))
    for j, model in enumerate(models):
        out[:, j] = model if isinstance(model, float) else model.predict(x, **predict)
    return out


class TreeScorer:
    """Probabilities from one LightGBM booster (or a constant) per output."""

    def __init__(self, outputs: list, meta: ModelMeta):
        if len(outputs) != len(meta.outputs):
            raise ValueError(f"{len(outputs)} tree models for {len(meta.outputs)} outputs")
        self.outputs = outputs
        self.preprocessor = meta.preprocessor

    def _predict(self, x: np.ndarray) -> np.ndarray:
        return predict_outputs(self.outputs, x, num_threads=1)

    def predict_proba(self, df: pd.DataFrame | dict[str, list]) -> np.ndarray:
        """Probabilities, shape [len(df), n_outputs]."""
        return self._predict(tree_matrix(self.preprocessor, df))

    def predict_row(self, row: dict) -> np.ndarray:
        """Probabilities of one row {feature: value}, shape [n_outputs]."""
        return self._predict(tree_row(self.preprocessor, row))[0]

    def save(self, directory: Path) -> None:
        """Writes `tree_<j>.txt` for each booster and `trees.json` listing every output."""
        listing = []
        for j, model in enumerate(self.outputs):
            if isinstance(model, float):
                listing.append({"constant": model})
            else:
                name = f"tree_{j}.txt"
                (Path(directory) / name).write_text(model.model_to_string())
                listing.append({"file": name})
        (Path(directory) / TREES_FILE).write_text(json.dumps({"outputs": listing}, indent=2))

    @classmethod
    def load(cls, directory: Path, meta: ModelMeta) -> "TreeScorer":
        """Reads `trees.json` and the boosters' text files (LightGBM's own format, no pickle)."""
        import lightgbm as lgb

        listing = json.loads((Path(directory) / TREES_FILE).read_text())["outputs"]
        outputs = [float(o["constant"]) if "constant" in o else
                   lgb.Booster(model_str=(Path(directory) / o["file"]).read_text()) for o in listing]
        return cls(outputs, meta)
