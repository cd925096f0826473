"""What the commands print beside their progress lines: metric tables and how to reach a command."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.table import Table


def metrics_table(title: str, metrics: dict[str, float]) -> Table:
    """Model, baselines and oracle side by side: one row per metric, one column per ranker."""
    rankers = ["test", "popularity", "lightgbm", "oracle"]
    names = {"test": "model (PyTorch)", "popularity": "popularity", "lightgbm": "LightGBM", "oracle": "oracle"}
    present = [r for r in rankers if any(k.startswith(f"{r}_") for k in metrics)]
    suffixes = sorted({k[len(r) + 1:] for r in present for k in metrics if k.startswith(f"{r}_")},
                      key=lambda s: (not s.startswith(("map", "roc")), s))
    table = Table(title=title)
    table.add_column("metric")
    for r in present:
        table.add_column(names[r], justify="right")
    for s in suffixes:
        if all(f"{r}_{s}" not in metrics for r in present[1:]) and s not in ("map_at_7", "roc_auc", "brier"):
            continue
        table.add_row(s, *[f"{metrics[f'{r}_{s}']:.4f}" if f"{r}_{s}" in metrics else "" for r in present])
    return table


def command_path(name: str) -> str:
    """How the user reaches `name` of this installation: bare when it is on PATH, else its full path
    (for example .venv/bin/nextbest when the virtual environment is not activated)."""
    import shutil

    ours = Path(sys.executable).with_name(name)
    found = shutil.which(name)
    if not ours.exists() or (found and Path(found).resolve() == ours.resolve()):
        return name
    return str(ours)
