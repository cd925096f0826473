"""A private, real `redis-server` for tests: started on a free port, stoppable mid-test.

    from tests.redis_server import redis_server

    with redis_server() as redis:
        ...  # point the work dir at redis.url
        redis.stop()   # SIGKILL, as a crash or an OOM kill would: the degraded path
        redis.start()  # the same port again, empty (nothing is persisted)

The binary comes from PATH (`.ci/run` installs it). Without it the test fails, never skips:
a skipped Redis test in CI would hide exactly what it is there to check.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from nextbest.cli.server import free_port

_START_TIMEOUT_S = 10.0
_PORT_TRIES = 5


def _ping(port: int, timeout: float = 0.2) -> bool:
    """True when a Redis answers PING on 127.0.0.1:port (raw RESP, no client library needed);
    one that wants a password first answers NOAUTH, which says as much."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """One `redis-server` process on 127.0.0.1, no persistence, log in its own directory."""

    def __init__(self, binary: str, workdir: Path, port: int, db: int = 0, args: Sequence[str] = ()):
        self.binary, self.dir, self.port, self.db, self.args = binary, workdir, port, db, tuple(args)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/{self.db}"

    @property
    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = _START_TIMEOUT_S) -> None:
        """Starts the server on `self.port` and waits until it answers PING.

        Raises:
            RuntimeError: it exited or did not answer in time (the message carries its log).
        """
        if self.running:
            return
        # --save '' and --appendonly no: nothing on disk, so a restart comes back empty.
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log"), *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError(f"redis-server on port {self.port} exited at start:\n{self.log[-2000:]}")
            if _ping(self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING within {timeout:g}s:\n"
                           f"{self.log[-2000:]}")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Stops the server (SIGKILL by default, like a crash) and waits until the port refuses."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self.proc = None


@contextlib.contextmanager
def redis_server(db: int = 0, args: Sequence[str] = ()) -> Iterator[RedisServer]:
    """A private `redis-server` on a free port, yielded running and killed at the end.

    Args:
        db: the database number `url` names.
        args: more `redis-server` options, e.g. `("--requirepass", "pw")`.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not on PATH: install it (apt-get install redis-server) or run .ci/run, "
                    "which installs and starts it", pytrace=False)
    workdir = Path(tempfile.mkdtemp(prefix="nextbest-redis-"))
    server = None
    try:
        for attempt in range(_PORT_TRIES):
            # free_port() releases the port before Redis binds it; if another process takes it
            # in between, Redis exits at once and the next port is tried.
            server = RedisServer(binary, workdir, free_port(), db, args)
            try:
                server.start()
                break
            except RuntimeError:
                if attempt == _PORT_TRIES - 1:
                    raise
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
