"""A serving worker's life tied to its server's, and the checks a server passes before it starts.

BentoML runs each worker in its own process group. If the server process dies without stopping
its workers (`kill -9`, an OOM kill), a worker would be re-parented to init and keep answering on
the port it inherited. `watch_parent` ends the worker as soon as its parent is gone.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

from nextbest.settings import writable_dir

log = logging.getLogger("nextbest.serving")

POLL_SECONDS = 0.25
GRACE_SECONDS = 5.0


def watch_parent(poll: float = POLL_SECONDS, grace: float = GRACE_SECONDS) -> threading.Thread:
    """Starts a daemon thread that stops this process once its parent process is gone: SIGTERM first
    (requests in flight finish; every acknowledged decision is already committed), then an exit
    after `grace` seconds if the process is still alive."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        log.error("the server process %d is gone; this worker (pid %d) stops", parent, os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os._exit(1)

    thread = threading.Thread(target=watch, name="nextbest-parent-watch", daemon=True)
    thread.start()
    return thread


def port_in_use(host: str, port: int) -> bool:
    """Whether another process already listens on (host, port)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def durable_log_problem(root: Path, events_db: Path) -> str | None:
    """Why the service could not commit a decision to its event log (None when it can): the work
    directory must take writes, and an existing log a write transaction."""
    from nextbest.serving.eventlog import EventLog

    return writable_dir(root) or EventLog.write_problem(events_db)
