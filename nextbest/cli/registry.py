"""`nextbest registry`: promote a registered version to champion, roll back, and read the history."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from nextbest.cli.common import WorkdirOpt, console, run_stage, workdir_paths

registry_app = typer.Typer(help="Model registry: promote a version to champion, roll back, read the history.",
                           no_args_is_help=True)


@registry_app.command("promote")
def registry_promote(
    task: str = typer.Argument(..., help="nbp, churn, uplift or uplift_<campaign>"),
    version: str = typer.Option(..., help="Version to make champion."),
    reason: str = typer.Option("promoted by hand", help="Recorded with the promotion."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Make a registered version the champion (serving loads it at its next start)."""
    from nextbest.training.registry import promote

    _check_model(task)
    previous = run_stage(promote, workdir_paths(workdir), task, version, reason)
    if previous == str(version):
        console.print(f"{task}: v{version} is already champion; nothing changed")
    else:
        console.print(f"{task}: champion is now v{version} (was {f'v{previous}' if previous else 'none'})")


@registry_app.command("rollback")
def registry_rollback(
    task: str = typer.Argument(..., help="nbp, churn, uplift or uplift_<campaign>"),
    reason: str = typer.Option("rolled back by hand", help="Recorded with the rollback."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Restore the champion before the last promotion still in force."""
    from nextbest.training.registry import rollback

    _check_model(task)
    restored = run_stage(rollback, workdir_paths(workdir), task, reason)
    console.print(f"{task}: champion rolled back to v{restored}")


@registry_app.command("history")
def registry_history(task: str = typer.Argument(..., help="nbp, churn, uplift or uplift_<campaign>"),
                     workdir: Optional[Path] = WorkdirOpt):
    """Every change of champion, oldest first: when, who, what and why."""
    from nextbest.training.registry import champion_history

    _check_model(task)
    events = run_stage(champion_history, workdir_paths(workdir), task)
    table = Table(title=f"{task}: champion history")
    for column in ("at (UTC)", "action", "version", "previous", "by", "reason"):
        table.add_column(column)
    for e in events:
        table.add_row(e["at"], e["action"], f"v{e['version']}", f"v{e['previous']}" if e.get("previous") else "none",
                      e.get("by", ""), e.get("reason", ""))
    Console().print(table)


def _check_model(name: str) -> None:
    """The registered models: nbp, churn, and the uplift models (`nextbest train uplift`)."""
    import re

    if name not in ("nbp", "churn", "uplift") and not re.fullmatch(r"uplift_[A-Za-z0-9_-]+", name):
        console.print(f"[red]error:[/] MODEL must be nbp, churn, uplift or uplift_<campaign>, got {name!r}")
        raise typer.Exit(2)
