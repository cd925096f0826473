"""Starting, probing and stopping `bentoml serve` (the CLI, tests and benchmarks use these)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from nextbest.cli.common import StageError, stage
from nextbest.constants import MODELS_DIR_ENV, WORKDIR_ENV
from nextbest.settings import Paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(paths: Paths, port: int, host: str = "127.0.0.1") -> list[str]:
    bentoml = Path(sys.executable).with_name("bentoml")
    return [str(bentoml if bentoml.exists() else "bentoml"), "serve", "nextbest.serving.service:NextBest",
            "--working-dir", str(paths.root.resolve()), "--host", host, "--port", str(port)]


def serve_env(paths: Paths) -> dict[str, str]:
    env = dict(os.environ)
    env[WORKDIR_ENV] = str(paths.root.resolve())  # BentoML changes into --working-dir: a relative path would move
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    # One thread per BLAS/OpenMP pool: a decision is small matrix work, and extra threads only
    # spin against the API threads (measured: about half the CPU per decision with 1 thread).
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    return env


def preflight(paths: Paths, host: str, port: int, wait_for_models: bool = False) -> None:
    """What `nextbest serve` checks before it starts BentoML, each failure one line (exit 2): the port is
    free, the work directory takes durable writes, and both champion models are registered (unless
    the service is asked to wait for them).

    Raises:
        StageError: naming what is wrong.
    """
    from nextbest.serving.lifecycle import port_in_use, writable_dir

    if port_in_use(host, port):
        raise StageError(f"port {port} on {host} is already in use (another server is listening); "
                         "stop it or pass --port")
    problem = writable_dir(paths.root)
    if problem:
        raise StageError(f"{problem}: the service logs every decision there before it answers")
    for db in (paths.events_db, paths.root / "fallback.db"):
        if db.exists() and not os.access(db, os.R_OK | os.W_OK):
            raise StageError(f"{db} is not writable: the service logs every decision there before it answers")
    if not wait_for_models and not os.environ.get(MODELS_DIR_ENV):
        from nextbest.constants import CHURN_MODEL_NAME, NBP_MODEL_NAME
        from nextbest.training.registry import alias_version

        names = (NBP_MODEL_NAME, CHURN_MODEL_NAME)
        no_registry = paths.mlflow_uri == paths.local_mlflow_uri and not (paths.mlflow / "mlflow.db").exists()
        missing = list(names) if no_registry else [n for n in names if alias_version(paths, n) is None]
        if missing:
            raise StageError(f"no champion model {' or '.join(repr(m) for m in missing)} in {paths.mlflow_uri}: "
                             "train them first (nextbest train nbp / churn), or pass --wait-for-models")
        _check_feature_services(paths, names)


def _check_feature_services(paths: Paths, names: tuple[str, ...]) -> None:
    """A champion whose feature service version could no longer be applied (the bank's tables changed)
    cannot read its inputs: say so before starting."""
    from nextbest.feature_repo.versions import read_record

    unavailable = dict(read_record(paths).unavailable)
    if not unavailable:
        return
    from nextbest.artifact import META_FILE, ModelMeta
    from nextbest.training.registry import fetch_alias

    for name in names:
        registered = fetch_alias(paths, name)
        service = ModelMeta.from_json((registered.local_dir / META_FILE).read_text()).feature_service
        if service in unavailable:
            raise StageError(f"champion {name!r} v{registered.version} reads feature service {service}, which is no "
                             f"longer applied ({unavailable[service]}): retrain it (nextbest train {name}) or "
                             "restore that table in configs/features.yaml")


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StageError(f"the service exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise StageError(f"the service was not ready on port {port} within {timeout:.0f}s")


def stop_server(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """Stops `bentoml serve` and its workers with SIGTERM (SIGKILL only if it hangs)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def demo_request(paths: Paths, port: int) -> dict:
    import httpx
    import pandas as pd

    from nextbest.features.build import HOLDINGS_VIEW

    holdings = pd.read_parquet(paths.features / f"{HOLDINGS_VIEW}.parquet",
                               columns=["customer_id", "event_timestamp", "n_products"])
    latest = holdings[(holdings.event_timestamp == holdings.event_timestamp.max()) & (holdings.n_products > 0)]
    customer_id = str(latest.customer_id.iloc[0])
    with stage(f"start the BentoML service on port {port}"):
        proc = subprocess.Popen(serve_command(paths, port), env=serve_env(paths), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            wait_ready(port, proc)
        except StageError:
            stop_server(proc)
            raise StageError(f"service failed to start: {proc.stderr.read().decode()[-2000:]}") from None
    try:
        with stage(f"POST /recommend for {customer_id}"):
            resp = httpx.post(f"http://127.0.0.1:{port}/recommend",
                              json={"customer_id": customer_id, "channel": "mobile_app", "k": 3}, timeout=30)
            if resp.status_code != 200:
                raise StageError(f"/recommend answered {resp.status_code}: {resp.text}")
    finally:
        with stage("stop the service"):
            stop_server(proc)
    return resp.json()
