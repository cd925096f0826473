"""Starting the real CLI and a real `nextbest serve` from tests (shared by service and e2e tests)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nextbest.cli.common import StageError
from nextbest.cli.server import free_port, wait_ready
from tests.conftest import REPO_ROOT


def run_cli(*args: str, workdir: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs `nextbest <args> --workdir <workdir>` in a subprocess and returns the finished process."""
    return subprocess.run([sys.executable, "-m", "nextbest.cli", *args, "--workdir", str(workdir)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
                          env={**os.environ, **(env or {})})


@contextlib.contextmanager
def served(workdir: Path, env: dict | None = None, log_name: str = "server.log", timeout: float = 180,
           command: Callable[[int], list[str]] | None = None,
           cwd: Path = REPO_ROOT) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real `nextbest serve` (or `command(port)`) on a free port; yields (base URL, process) once
    /readyz answers.

    The server log goes to a file in the work dir (a pipe could fill and block the server).
    Whatever happens, the process group and every worker BentoML started (its workers run in
    their own process groups and outlive a killed parent) are killed at the end.
    """
    import psutil

    port = free_port()
    log_path = workdir / log_name
    with open(log_path, "w") as log:
        cmd = command(port) if command else [sys.executable, "-m", "nextbest.cli", "serve", "--workdir",
                                             str(workdir), "--port", str(port)]
        proc = subprocess.Popen(cmd, cwd=cwd, start_new_session=True,
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        tree: list = []
        try:
            try:
                wait_ready(port, proc, timeout=timeout)
            except StageError:
                pytest.fail(f"service not ready within {timeout} s:\n" + log_path.read_text()[-4000:])
            with contextlib.suppress(psutil.Error):
                tree = psutil.Process(proc.pid).children(recursive=True)
            yield f"http://127.0.0.1:{port}", proc
        finally:
            kill_tree(proc, tree)


def kill_tree(proc: subprocess.Popen, tree: list | None = None) -> None:
    """Kills a server's process group and every worker in `tree` (default: its children now): BentoML
    runs its workers in process groups of their own."""
    import psutil

    if tree is None:
        tree = []
        with contextlib.suppress(psutil.Error):
            tree = psutil.Process(proc.pid).children(recursive=True)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    for child in tree:
        with contextlib.suppress(psutil.Error):
            child.kill()


def copy_workdir(src: Path, dst: Path) -> Path:
    """A private copy of a work dir (without its event log and logs), its Feast config pointed at the copy."""
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("events.db*", "*.log"))
    config = dst / "feast" / "feature_store.yaml"
    config.write_text(config.read_text().replace(str(src), str(dst)))
    return dst


def loaded_engine(workdir: Path):
    """A `nextbest.serving.engine.DecisionEngine` on `workdir`, loaded (models, store, policy) and ready."""
    from nextbest.serving.engine import DecisionEngine
    from nextbest.settings import Paths

    engine = DecisionEngine(Paths(workdir))
    engine.load()
    assert engine.ready, engine.error
    return engine


def latest_customers(workdir: Path) -> list[str]:
    """Customer ids of the work dir's latest feature snapshot, sorted."""
    import pandas as pd

    frame = pd.read_parquet(workdir / "features" / "customer_holdings.parquet",
                            columns=["customer_id", "event_timestamp"])
    return sorted(map(str, frame[frame.event_timestamp == frame.event_timestamp.max()].customer_id.unique()))


# The quickstart bank fills these daily capacities of the `savings` campaign (with the quota and budget below).
TIGHT_CAPACITY = {"email": 40, "push": 25, "sms": 8, "call_center": 3}


def tight_campaign_project(quickstart_workdir: Path, root: Path) -> tuple[Path, Path]:
    """A project folder whose `savings` campaign has capacities, a quota and a budget that bind on the
    quickstart bank (every other config: the package default), and a private copy of the work dir.

    Returns:
        (project folder, work dir).
    """
    import yaml

    from nextbest.settings import default_config_dir

    wd = copy_workdir(quickstart_workdir, root / "wd")
    (root / "bank" / "configs").mkdir(parents=True)
    (root / "bank" / "nextbest.yaml").write_text("name: bank\n")
    cfg = yaml.safe_load((default_config_dir() / "campaigns.yaml").read_text())
    savings = cfg["campaigns"]["savings"]
    savings["audience"] = {"lifecycle": ["new", "active", "dormant"]}
    for channel, capacity in TIGHT_CAPACITY.items():
        savings["channels"][channel]["capacity"] = capacity
    savings["quotas"] = {"term_deposit": 5}
    savings["budget"] = 30
    (root / "bank" / "configs" / "campaigns.yaml").write_text(yaml.safe_dump(cfg))
    return root / "bank", wd
