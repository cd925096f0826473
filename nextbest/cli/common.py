"""What every command shares: the console, stages with their timing, user errors (one line, exit
code 2), the work directory with its configs validated before any work."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from nextbest.constants import WORKDIR_ENV
from nextbest.settings import Paths, writable_dir

console = Console(stderr=True)

WorkdirOpt = typer.Option(None, "--workdir", "-w", help=f"Work directory (env {WORKDIR_ENV}; default: the project's "
                          "work/, else ./.nextbest; `nextbest info` shows which).")


class StageError(Exception):
    """A stage failed with a message meant for the user (no stack trace)."""


@contextmanager
def stage(name: str):
    """Prints a status line while a stage runs and its timing when it ends."""
    started = time.perf_counter()
    with console.status(f"[bold]{name}[/]…"):
        yield
    console.print(f"[green]✓[/] {name} [dim]({time.perf_counter() - started:.1f}s)[/]")


def workdir_paths(workdir: Optional[Path]) -> Paths:
    """The work directory's paths (created), once every config in force is known to be valid: a bad
    one names its file, field and value, and the command exits 2 before any work."""
    return run_stage(_open_workdir, workdir)


def _open_workdir(workdir: Optional[Path]) -> Paths:
    from nextbest.config import validate_all

    paths = Paths.from_workdir(workdir)
    # --workdir is NEXTBEST_HOME for this command and what it starts (the service, torchrun), so that a
    # work directory inside a project folder finds that project's configs from anywhere.
    os.environ[WORKDIR_ENV] = str(paths.root)
    validate_all()
    try:
        paths.ensure()
    except OSError as exc:
        raise StageError(f"cannot create the work directory: {os_error(exc)}") from None
    problem = writable_dir(paths.root)
    if problem:
        raise StageError(f"work {problem}")
    return paths


def print_error(message, label: str = "error:") -> None:
    """One error line on stderr, never cut or wrapped (paths stay whole) nor read as markup."""
    from rich.markup import escape

    console.print(f"[red]{label}[/] {escape(str(message))}", soft_wrap=True, highlight=False)


def os_error(exc: OSError) -> str:
    """An operating-system error as one line: the file, then what went wrong."""
    names = [str(n) for n in (exc.filename, exc.filename2) if n]
    return f"{' -> '.join(names)}: {exc.strerror}" if names and exc.strerror else str(exc)


def _user_errors():
    from nextbest.config import ConfigError
    from nextbest.schema import SchemaError

    return (SchemaError, ConfigError, FileNotFoundError, LookupError, StageError, ValueError)


def run_stage(fn, *args, **kwargs):
    """Runs a stage, turning expected failures into a one-line error and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except OSError as exc:  # a read-only directory, a file where a folder should be, a full disk
        print_error(os_error(exc))
        raise typer.Exit(2) from None
    except _user_errors() as exc:
        print_error(exc)
        raise typer.Exit(2) from None


def check_task(task: str) -> None:
    if task not in ("nbp", "churn"):
        console.print(f"[red]error:[/] TASK must be 'nbp' or 'churn', got {task!r}")
        raise typer.Exit(2)
