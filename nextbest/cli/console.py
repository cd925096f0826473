"""`nextbest console`: the read-only web console over a work directory (registered in nextbest/cli/commands.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from nextbest.cli.common import WorkdirOpt
from nextbest.constants import WORKDIR_ENV

CONSOLE_PORT = 8050


def console_command(
    port: int = typer.Option(CONSOLE_PORT, min=1, max=65535, help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface; set "
                             "NEXTBEST_API_KEY then)."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """A read-only web console for marketers and risk officers: overview, campaigns, customer portrait,
    decisions and models, over the work directory. With NEXTBEST_API_KEY set, every page asks for that key."""
    from nextbest.cli.common import StageError, console, run_stage
    from nextbest.settings import Paths

    def check() -> Paths:
        from nextbest.config import validate_all
        from nextbest.serving.lifecycle import port_in_use

        paths = Paths.from_workdir(workdir)  # read only: nothing is created
        # As for every command, --workdir is NEXTBEST_HOME here, so a work directory inside a project
        # brings that project's configs (the pages read them).
        os.environ[WORKDIR_ENV] = str(paths.root)
        validate_all()  # like every command: an invalid config is named before any work
        if port_in_use(host, port):
            raise StageError(f"port {port} on {host} is already in use; stop what listens there or pass --port")
        return paths

    paths = run_stage(check)
    import uvicorn

    from nextbest.monitoring.console.app import API_KEY_ENV, console_app

    if not paths.root.is_dir():
        console.print(f"[yellow]warning:[/] no work directory at {paths.root} yet: the pages say what is missing")
    guarded = "with the API key" if os.environ.get(API_KEY_ENV) else "without a key (NEXTBEST_API_KEY is not set)"
    console.print(f"console of {paths.root} at http://{host}:{port}/ ({guarded}); Ctrl-C stops it", soft_wrap=True)
    uvicorn.run(console_app(paths), host=host, port=port, log_level="warning")
