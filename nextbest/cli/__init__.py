"""The `nextbest` command line: `app` (Typer) and `main`, its console entry point.

    common.py    console, stages, user errors, the work directory with its configs validated
    stages.py    the stage runners behind the commands
    commands.py  the commands themselves
    main.py      the console entry point
    registry.py  `nextbest registry`: promote, roll back, history
    server.py    starting, probing and stopping `bentoml serve` (public: tests and benchmarks use it)
    render.py    metric tables and command paths
    simulate.py  `nextbest simulate`
"""

from nextbest.cli.commands import app
from nextbest.cli.main import main

__all__ = ["app", "main"]
