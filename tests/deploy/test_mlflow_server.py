"""A shared MLflow: with NEXTBEST_MLFLOW_URI pointing at a real `mlflow server` (SQLite backend,
local artifact root), training, the registry, serving and the monitor use it, and the work
directory holds no registry of its own."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from nextbest.cli.server import free_port
from nextbest.settings import default_config_dir
from tests.servers import copy_workdir, latest_customers, run_cli, served

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on a free port; yields its URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    with open(root / "server.log", "w") as log:
        proc = subprocess.Popen([str(mlflow), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                                 "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", "1"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{uri}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "mlflow server not up in 120 s"
            time.sleep(0.5)
        yield uri, root
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def _short(task: str, tmp_path: Path) -> Path:
    """The default config of `task` with fewer epochs (the registry is under test, not the model)."""
    cfg = yaml.safe_load((default_config_dir() / f"{task}.yaml").read_text())
    cfg.update(max_epochs=2, ensemble=1) if task == "churn" else cfg.update(max_epochs=2)
    path = tmp_path / f"{task}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_promote_serve_and_monitor_against_a_shared_mlflow_server(feast_bank, mlflow_server, tmp_path):
    uri, server_root = mlflow_server
    wd = copy_workdir(feast_bank.root, tmp_path / "wd")
    env = {"NEXTBEST_MLFLOW_URI": uri}
    for task in ("nbp", "churn", "nbp"):
        proc = run_cli("train", task, "--config", str(_short(task, tmp_path)), workdir=wd, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    # The registry and the runs' files are the server's; the work directory has none.
    assert not (wd / "mlflow" / "mlflow.db").exists() and not any((wd / "mlflow").rglob("model.json"))
    assert list((server_root / "artifacts").rglob("model.json"))
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert sorted(v.version for v in client.search_model_versions("name = 'nbp'")) == ["1", "2"]
    champion = client.get_model_version_by_alias("nbp", "champion").version
    other = "2" if champion == "1" else "1"
    proc = run_cli("registry", "promote", "nbp", "--version", other, workdir=wd, env=env)
    assert proc.returncode == 0 and f"champion is now v{other}" in proc.stdout + proc.stderr, proc.stderr
    assert client.get_model_version_by_alias("nbp", "champion").version == other

    with served(wd, env=env) as (base, _):
        customer = latest_customers(wd)[0]
        resp = httpx.post(f"{base}/recommend", json={"customer_id": customer, "channel": "web"}, timeout=30)
        assert resp.status_code == 200, resp.text
        assert resp.json()["model_versions"] == {"nbp": other, "churn": "1"}
    assert not (wd / "mlflow" / "mlflow.db").exists()

    proc = run_cli("monitor", workdir=wd, env=env)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: the gate failed, which is the monitor's verdict
    summary = json.loads(next((wd / "reports").glob("*/summary.json")).read_text())
    drift = summary["sections"]["prediction_drift"]  # the champion's scores, read through the server
    assert drift["model"] == "nbp" and drift["products"]["n_tested"] > 0
    assert not (wd / "mlflow" / "mlflow.db").exists()
