"""`nextbest serve` refuses to start, in one line and exit code 2, when it could not serve: a config that
does not validate, a port already taken, a work directory that takes no writes (or a file where a
folder should be), no champion models. The CLI says the same on any command for an unwritable
work directory."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from nextbest.cli import app
from tests.conftest import REPO_ROOT


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in ("NEXTBEST_PROJECT", "NEXTBEST_HOME", "NEXTBEST_MLFLOW_URI", "NEXTBEST_MODELS_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace("rejection_cooldown_days: 30", "rejection_cooldown_days: thirty"),
     "field rejection_cooldown_days"),
    (lambda t: t + "\nrejection_cooldown_dayz: 30\n", "field rejection_cooldown_dayz"),
])
def test_a_bad_config_stops_serve_before_bentoml_starts(clean_env, monkeypatch, edit, expected):
    CliRunner().invoke(app, ["init", "bank"])
    rules = (clean_env / "bank" / "configs" / "rules.yaml").resolve()
    rules.write_text(edit(rules.read_text()))
    monkeypatch.chdir(clean_env / "bank")
    started = time.monotonic()
    result = CliRunner().invoke(app, ["serve", "--port", "1"])
    line = " ".join(_one_error_line(result).split())
    assert str(rules) in line and expected in line
    assert "thirty" in line or "dayz" in line
    assert time.monotonic() - started < 10


def test_a_port_in_use_is_one_line(clean_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--port", str(port), "--workdir", str(clean_env / "wd")])
    line = _one_error_line(result)
    assert f"port {port}" in line and "already in use" in line


def test_no_champion_models_refuses_to_serve_unless_asked_to_wait(clean_env):
    result = CliRunner().invoke(app, ["serve", "--port", "0", "--workdir", str(clean_env / "wd")])
    line = _one_error_line(result)
    assert "no champion model 'nbp' or 'churn'" in line and "--wait-for-models" in line


def test_a_file_where_the_work_directory_should_be_is_one_line(clean_env):
    (clean_env / "afile").write_text("not a folder")
    for args in (["generate", "--customers", "50", "--months", "3"], ["serve", "--port", "0"]):
        result = CliRunner().invoke(app, [*args, "--workdir", str(clean_env / "afile" / "wd")])
        line = _one_error_line(result)
        assert str(clean_env / "afile") in line and "Not a directory" in line


def _read_only(path, *command):
    """Runs `command` with `path` read-only: by permissions for a normal user, and on a read-only bind
    mount for root (who writes through permissions)."""
    if os.geteuid() != 0:
        os.chmod(path, 0o555)
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
        finally:
            os.chmod(path, 0o755)
    script = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'
    assert shutil.which("unshare"), "unshare (util-linux) is needed to make a read-only directory as root"
    return subprocess.run(["unshare", "-m", "sh", "-c", script, str(path), *command], capture_output=True,
                          text=True, timeout=120, cwd=REPO_ROOT)


def test_a_read_only_work_directory_is_one_line_for_every_command(clean_env):
    wd = clean_env / "wd"
    for sub in ("raw", "truth", "features", "feast", "mlflow", "mlflow/artifacts", "models", "reports"):
        (wd / sub).mkdir(parents=True, exist_ok=True)
    for args in (["generate", "--customers", "50", "--months", "3"], ["serve", "--port", "0"]):
        proc = _read_only(wd, sys.executable, "-m", "nextbest.cli", *args, "--workdir", str(wd))
        out = (proc.stdout + proc.stderr).strip()
        assert proc.returncode == 2 and "Traceback" not in out, out
        assert out.startswith("error:") and len(out.splitlines()) == 1, out
        assert f"directory {wd} is not writable" in " ".join(out.split()), out


def test_the_server_gets_absolute_paths_from_a_relative_work_directory(clean_env):
    from nextbest.cli.server import serve_command, serve_env
    from nextbest.settings import Paths

    paths = Paths(clean_env.relative_to(clean_env) / "wd")  # "wd", relative to the current directory
    command = serve_command(paths, 3000)
    assert command[command.index("--working-dir") + 1] == str(clean_env / "wd")
    assert serve_env(paths)["NEXTBEST_HOME"] == str(clean_env / "wd")  # BentoML changes into the working dir
