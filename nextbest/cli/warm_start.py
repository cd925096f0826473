"""`nextbest warm-start`: the bandit learns from history before its first decision (registered in
nextbest/cli/commands.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nextbest.cli.common import WorkdirOpt


def warm_start(
    offers: bool = typer.Option(True, "--offers/--no-offers", help="Learn from the offer history, "
                                "raw/offers.parquet."),
    log: Optional[list[Path]] = typer.Option(None, "--log", help="A decision log (events.db) to learn from: another "
                                             "deployment's, or this work dir's own. Repeatable."),
    max_weight: float = typer.Option(1.0, min=1.0, help="Above 1: weight a logged offer by its inverse propensity, "
                                     "clipped at this (default 1: every logged offer counts once)."),
    history_weight: float = typer.Option(1.0, min=0.001, max=1.0, help="How many observations each past answer "
                                         "counts as: below 1 leaves the policy more open to what it sees now."),
    force: bool = typer.Option(False, help="Replace a posterior the policy has already learnt online."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Learn the policy's acceptance model from history and save it, so the service starts from it:
    the offer history (rescored point-in-time by the champion model) and any decision logs (each
    answered offer once, or weighted by its inverse propensity with --max-weight). Run it after
    `nextbest train`, before serving."""
    from nextbest.cli.common import console, run_stage, workdir_paths

    paths = workdir_paths(workdir)

    def go():
        from nextbest.monitoring.warm_start import warm_start as learn

        with console.status("learning from history"):
            return learn(paths, offers=offers, logs=tuple(log or ()), max_weight=max_weight, force=force,
                         history_weight=history_weight)

    result = run_stage(go)
    for note in result["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    for s in result["sources"]:
        skipped = "; ".join(f"{n:,} {why}" for why, n in s["skipped"].items())
        console.print(f"{s['source']}: {s['rows']:,} answered offers, {s['accepted']:,} accepted"
                      + (f" (left out: {skipped})" if skipped else ""))
    console.print(f"policy {result['policy']!r} learnt from {result['observations']:,} offers: mean predicted "
                  f"acceptance on them {100 * result['acceptance_before']:.2f}% under the prior, "
                  f"{100 * result['acceptance_after']:.2f}% now (observed "
                  f"{100 * result['accepted'] / result['observations']:.2f}%)")
