"""PyTorch models and their self-describing checkpoints.

A checkpoint is a directory holding `weights.pt` (a plain `state_dict`, loaded with
`weights_only=True`), the same tensors as `weights.npz` (what serving's numpy scorer reads) and
`model.json` (feature names, vocabularies, scaler statistics, product index, feature-service name,
config). `from_checkpoint` rebuilds the model from those alone: nothing is unpickled. The format,
the preprocessor and the numpy scorer are `nextbest.artifact`; this module adds the networks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from nextbest.artifact import META_FILE, WEIGHTS_FILE, ModelMeta, Preprocessor, save_numpy_weights
from nextbest.trees import FAMILY, TreeScorer


BLOCK_ROWS = 100_000  # rows `tensors` turns into model inputs at a time


def tensors(pre: Preprocessor, df: pd.DataFrame | dict[str, list]) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's inputs as tensors: (numeric float32 [n, width], categorical int64 [n, n_categorical]).

    Takes a frame, or columns as lists (`Preprocessor.arrays`).
    """
    if not isinstance(df, pd.DataFrame) or len(df) <= BLOCK_ROWS:
        x, cats = pre.arrays(df)
        # Row-major, so that a batch's rows are gathered from contiguous memory.
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(np.ascontiguousarray(cats))
    # A large frame a block of rows at a time: the float64 intermediates follow the block, not the frame.
    x = np.empty((len(df), pre.width), dtype=np.float32)
    cats = np.empty((len(df), len(pre.categorical)), dtype=np.int64)
    for start in range(0, len(df), BLOCK_ROWS):
        x[start:start + BLOCK_ROWS], cats[start:start + BLOCK_ROWS] = pre.arrays(df.iloc[start:start + BLOCK_ROWS])
    return torch.from_numpy(x), torch.from_numpy(cats)


class TabularNet(nn.Module):
    """MLP over standardised numeric features and embedded categoricals.

    Output: logits of shape [batch, n_outputs] (one per product, or one for churn).
    """

    def __init__(self, n_numeric: int, vocab_sizes: list[int], n_outputs: int, hidden: list[int],
                 embedding_dim: int = 4, dropout: float = 0.1):
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(size + 1, embedding_dim) for size in vocab_sizes)
        layers: list[nn.Module] = []
        width = n_numeric + embedding_dim * len(vocab_sizes)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, n_outputs))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        # x_num: [B, n_numeric], x_cat: [B, n_categorical] -> [B, n_outputs]
        parts = [x_num] + [emb(x_cat[:, j]) for j, emb in enumerate(self.embeddings)]
        return self.mlp(torch.cat(parts, dim=1))


class Ensemble(nn.Module):
    """Several TabularNets trained alike from different seeds; the logit is their mean.

    Averaging networks that differ only in initialisation and batch order cancels part of what
    each learned by chance (docs/experiments.md).
    """

    def __init__(self, members: list[TabularNet]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x_num, x_cat) for m in self.members]).mean(0)


def build_model(meta: ModelMeta) -> TabularNet | Ensemble:
    """An untrained model of the shape `meta` describes: one TabularNet, or an Ensemble of `members`."""
    if meta.members < 1:
        raise ValueError(f"model.json: members must be at least 1, got {meta.members}")
    pre = meta.preprocessor
    nets = [TabularNet(pre.width, [len(pre.vocabs[c]) for c in pre.categorical], len(meta.outputs),
                       meta.hidden, meta.embedding_dim, meta.dropout) for _ in range(meta.members)]
    return nets[0] if meta.members == 1 else Ensemble(nets)


def numpy_state(model: TabularNet | Ensemble) -> dict[str, np.ndarray]:
    """The model's state_dict as numpy arrays (float32, the same names), what `nextbest.artifact.RowScorer` reads."""
    return {name: t.detach().cpu().numpy() for name, t in model.state_dict().items()}


Model = TabularNet | Ensemble | TreeScorer


def save_checkpoint(directory: Path, model: Model, meta: ModelMeta) -> Path:
    """Writes `weights.pt`, `weights.npz` (the same tensors, for torch-free serving) and `model.json`; a
    LightGBM model writes its trees instead of the weights (`nextbest.trees`)."""
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(model, TreeScorer):
        model.save(directory)
        (directory / META_FILE).write_text(meta.to_json())
        return directory
    torch.save(model.state_dict(), directory / WEIGHTS_FILE)
    save_numpy_weights(directory, numpy_state(model))
    (directory / META_FILE).write_text(meta.to_json())
    return directory


def from_checkpoint(directory: Path) -> tuple[Model, ModelMeta]:
    """Rebuilds a model from a checkpoint directory without unpickling arbitrary objects."""
    meta = ModelMeta.from_json((Path(directory) / META_FILE).read_text())
    if meta.family == FAMILY:
        return TreeScorer.load(directory, meta), meta
    model = build_model(meta)
    state = torch.load(Path(directory) / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model, meta


@torch.no_grad()
def predict_proba(model: Model, meta: ModelMeta, df: pd.DataFrame | dict[str, list]) -> np.ndarray:
    """Calibrated probabilities, shape [len(df), len(meta.outputs)]."""
    if isinstance(model, TreeScorer):
        return model.predict_proba(df)
    x_num, x_cat = tensors(meta.preprocessor, df)
    return torch.sigmoid(model(x_num, x_cat) / meta.temperature).numpy()
