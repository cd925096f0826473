"""The console entry point: the commands with third-party chatter quietened and OS errors as one line."""

from __future__ import annotations

import os
import sys

from nextbest.cli.commands import app
from nextbest.cli.common import os_error, print_error


def main() -> None:  # pragma: no cover - console entry point
    _quiet_third_party()
    try:
        app()
    except OSError as exc:  # a read-only directory, a file where a folder should be, a full disk
        print_error(os_error(exc))
        sys.exit(2)


def _quiet_third_party() -> None:
    """Keeps the terminal to our own progress lines: libraries' warnings and INFO chatter are not for
    users. Set NEXTBEST_VERBOSE=1 to see them."""
    import logging
    import warnings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    if os.environ.get("NEXTBEST_VERBOSE"):
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    warnings.simplefilter("ignore")
    # Some libraries reset the warning filters on import; routing warnings to a silenced logger holds.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.ERROR)
    for name in ("mlflow", "feast", "alembic", "evidently", "lightgbm"):
        logging.getLogger(name).setLevel(logging.WARNING)
