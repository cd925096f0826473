"""The served models: registered checkpoints loaded as numpy scorers, so that serving runs without torch.

A checkpoint saved before the numpy weights (`weights.pt` and `model.json` only) still loads: through
torch, once, into the same numpy scorer.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from nextbest.artifact import ModelMeta, NumpyWeightsMissing, RowScorer, load_scorer
from nextbest.constants import MODELS_DIR_ENV
from nextbest.settings import Paths

log = logging.getLogger("nextbest.serving")


def load_checkpoint(directory: Path) -> tuple[RowScorer, ModelMeta]:
    """The numpy scorer of a checkpoint directory, read from `weights.npz`, else from `weights.pt` through torch."""
    try:
        return load_scorer(directory)
    except NumpyWeightsMissing as exc:
        log.warning("%s", exc)
        from nextbest.training.models import from_checkpoint, numpy_state

        model, meta = from_checkpoint(directory)
        return RowScorer(numpy_state(model), meta), meta


class LoadedModel:
    """A registered model at alias `champion` (or the version pinned in `$NEXTBEST_MODELS_DIR`, as a
    Bento carries it), loaded from its arrays and JSON (no unpickling)."""

    def __init__(self, name: str, paths: Paths, scratch: Path | None = None):
        """`scratch`: where a model not in the work directory's cache is downloaded by a reader that
        must not write there (see `fetch_version`)."""
        from nextbest.training.registry import fetch_alias, load_pinned

        pinned = os.environ.get(MODELS_DIR_ENV)
        self.registered = load_pinned(Path(pinned), name) if pinned else fetch_alias(paths, name, scratch=scratch)
        self.scorer, self.meta = load_checkpoint(self.registered.local_dir)

    def predict(self, row: dict) -> np.ndarray:
        """Probabilities for one customer's features {feature: value}."""
        return self.scorer.predict_row(row)
