"""A private, real PostgreSQL server for tests: a fresh cluster in a temporary folder, on a free port.

    from tests.postgres_server import postgres_server

    with postgres_server() as pg:
        pg.url  # postgresql://nextbest@127.0.0.1:PORT/bank (trust authentication, local only)

The binaries come from PATH or Debian's /usr/lib/postgresql/<version>/bin (`.ci/run` installs the
`postgresql` package). PostgreSQL refuses to run as root, so as root the cluster belongs to the
`postgres` user the package creates. Without the binaries the test fails, never skips.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nextbest.cli.server import free_port


def _binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)),
                                       None)
    if not found:
        pytest.fail(f"PostgreSQL's {name} is not installed (.ci/run installs the postgresql package)")
    return found


@dataclass
class Postgres:
    port: int
    folder: Path

    @property
    def url(self) -> str:
        return f"postgresql://nextbest@127.0.0.1:{self.port}/bank"


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    folder = Path(tempfile.mkdtemp(prefix="nextbest-pg-"))
    data = folder / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)  # noqa: E731
    proc = run(_binary("initdb"), "-D", str(data), "-U", "nextbest", "--auth=trust", "-E", "UTF8", "--no-sync")
    if proc.returncode != 0:
        pytest.fail(f"initdb failed: {proc.stderr[-2000:]}")
    proc = run(_binary("pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "60", "-o",
               f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        if proc.returncode != 0:
            pytest.fail(f"PostgreSQL did not start: {proc.stderr[-1000:]} "
                        f"{(folder / 'server.log').read_text()[-2000:] if (folder / 'server.log').exists() else ''}")
        created = run(_binary("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "nextbest", "bank")
        if created.returncode != 0:
            pytest.fail(f"createdb failed: {created.stderr[-1000:]}")
        yield Postgres(port, folder)
    finally:
        run(_binary("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        time.sleep(0.1)
        shutil.rmtree(folder, ignore_errors=True)
