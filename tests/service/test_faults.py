"""Faults against a real `nextbest serve` (or `bentoml serve` started the way a Bento is): the service's
answer, its readiness and its log afterwards.

- a worker never outlives its server (`kill -9` of the server's process group);
- a config that does not validate, or a work directory that takes no writes, leaves the worker up,
  not ready, saying why, and never restarting in a loop;
- hostile or sloppy requests: a chunked body over the limit, no Content-Type, the wrong method,
  loose types, null or out-of-range timestamps, each answered as JSON with the right 4xx.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from nextbest.cli.server import free_port, serve_command, serve_env
from nextbest.settings import Paths
from tests.servers import copy_workdir, kill_tree, served

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(quickstart_workdir, tmp_path_factory) -> Path:
    return copy_workdir(quickstart_workdir, tmp_path_factory.mktemp("faults") / "wd")


@pytest.fixture(scope="module")
def server(workdir):
    with served(workdir) as (base, proc):
        yield base, proc


def _post(base, path, **kwargs):
    return httpx.post(base + path, timeout=30, **kwargs)


def test_a_worker_never_outlives_its_server(workdir, tmp_path):
    wd = copy_workdir(workdir, tmp_path / "wd")
    with served(wd) as (base, proc):
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert workers, "bentoml serve started no worker"
        # BentoML puts each worker in its own process group: killing the server's group spares them.
        assert any(os.getpgid(w.pid) != proc.pid for w in workers)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        gone, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, f"workers outlived the server: {[w.pid for w in alive]}"
        with pytest.raises(httpx.TransportError):
            httpx.get(base + "/healthz", timeout=3)


def test_hostile_and_sloppy_requests_get_json_4xx(server):
    base, _ = server

    def chunks():
        for _ in range(20):
            yield b"x" * 1024

    r = _post(base, "/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "bytes" in r.json()["error"]
    r = _post(base, "/recommend", content=b'{"customer_id": "C0000001"}')  # no Content-Type
    assert r.status_code == 415 and "application/json" in r.json()["error"]
    r = httpx.get(base + "/recommend", timeout=30)
    assert r.status_code == 405 and r.headers["content-type"].startswith("application/json")
    assert r.headers["allow"] == "POST" and "POST" in r.json()["error"]
    for body, field in [({"customer_id": "C0000001", "k": "3"}, "k"),
                        ({"customer_id": "C0000001", "explain": 0}, "explain"),
                        ({"customer_id": "C0000001", "context": {"timestamp": "0005-01-01T00:00:00Z"}}, "timestamp"),
                        ({"customer_id": "C0000001", "context": {"timestamp": "2036-01-01T00:00:00Z"}}, "timestamp")]:
        r = _post(base, "/recommend", json=body)
        assert r.status_code == 400, (body, r.text)
        assert field in [d["loc"][-1] for d in r.json()["detail"]]
    r = _post(base, "/events", json={"customer_id": "C0000001", "event": "opt_in", "timestamp": None})
    assert r.status_code == 400 and ["timestamp"] in [d["loc"] for d in r.json()["detail"]]
    r = _post(base, "/recommend", json={"customer_id": "C0000001", "k": 3, "explain": False})
    assert r.status_code == 200, r.text


def _serve_as_a_bento_would(workdir: Path, env: dict, port: int, wrap: list[str] | None = None) -> subprocess.Popen:
    """`bentoml serve` without the CLI's checks, as a Bento's container starts it."""
    log = open(workdir.parent / f"bento-{port}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([*(wrap or []), *serve_command(Paths(workdir), port)], start_new_session=True,
                            stdout=log, stderr=subprocess.STDOUT, env={**serve_env(Paths(workdir)), **env})


def _not_ready_for(port: int, proc: subprocess.Popen, seconds: float = 90) -> str:
    """Waits until the service answers; returns the reason `/recommend` gives for refusing."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        with contextlib.suppress(httpx.TransportError):
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=3)
            r = httpx.post(f"http://127.0.0.1:{port}/recommend", json={"customer_id": "C0000001"}, timeout=10)
            if r.status_code == 503 and "still loading" not in r.json()["error"]:
                assert ready.status_code == 503
                return r.json()["error"]
        time.sleep(1)
    raise AssertionError("the service never said why it is not ready")


def test_a_bad_config_in_a_bento_is_not_ready_with_the_reason_and_no_restart_loop(workdir, tmp_path):
    from typer.testing import CliRunner

    from nextbest.cli import app

    project = tmp_path / "bank"
    CliRunner().invoke(app, ["init", str(project)])
    rules = project / "configs" / "rules.yaml"
    rules.write_text(rules.read_text().replace("rejection_cooldown_days: 30", "rejection_cooldown_days: thirty"))
    wd = copy_workdir(workdir, tmp_path / "wd")
    port = free_port()
    proc = _serve_as_a_bento_would(wd, {"NEXTBEST_PROJECT": str(project)}, port)
    try:
        reason = _not_ready_for(port, proc)
        assert "rules.yaml" in reason and "rejection_cooldown_days" in reason and "thirty" in reason
        workers = psutil.Process(proc.pid).children(recursive=True)
        time.sleep(12)  # a worker that crashed on its config would have been restarted by now
        assert [w.pid for w in psutil.Process(proc.pid).children(recursive=True)] == [w.pid for w in workers]
        log = (wd.parent / f"bento-{port}.log").read_text()
        assert log.count("not serving:") == 1, log[-3000:]
    finally:
        kill_tree(proc)


def test_a_read_only_work_directory_is_never_ready(workdir, tmp_path):
    wd = copy_workdir(workdir, tmp_path / "wd")
    port = free_port()
    if os.geteuid() == 0:  # root writes through permissions: make the folder a read-only mount
        assert shutil.which("unshare"), "unshare (util-linux) is needed to make a read-only directory as root"
        wrap = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" '
                '&& exec "$@"', str(wd)]
    else:
        os.chmod(wd, 0o555)
        wrap = None
    proc = _serve_as_a_bento_would(wd, {}, port, wrap)
    try:
        reason = _not_ready_for(port, proc)
        assert f"{wd} is not writable" in reason
        r = httpx.post(f"http://127.0.0.1:{port}/events", json={"customer_id": "C0000001", "event": "opt_out"},
                       timeout=10)
        assert r.status_code == 503
    finally:
        kill_tree(proc)
        os.chmod(wd, 0o755)


def _degraded(base: str, customer: str) -> bool:
    r = httpx.post(base + "/recommend", json={"customer_id": customer, "channel": "mobile_app"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["degraded"]


def _until(predicate, seconds: float = 60) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"not within {seconds} s")


def test_the_online_store_removed_and_restored_under_a_running_server(workdir, tmp_path):
    wd = copy_workdir(workdir, tmp_path / "wd")
    store, aside = wd / "feast" / "online_store.db", tmp_path / "online_store.db"
    with served(wd) as (base, _):
        assert _degraded(base, "C0000001") is False
        store.rename(aside)
        _until(lambda: _degraded(base, "C0000001"))
        assert not store.exists()  # nothing recreated it empty
        aside.rename(store)
        _until(lambda: not _degraded(base, "C0000001"))


def test_a_store_missing_at_start_is_not_created_empty_and_is_picked_up_once_back(workdir, tmp_path):
    wd = copy_workdir(workdir, tmp_path / "wd")
    store, aside = wd / "feast" / "online_store.db", tmp_path / "online_store.db"
    store.rename(aside)
    with served(wd) as (base, _):
        assert _degraded(base, "C0000001") is True
        assert not store.exists()
        aside.rename(store)
        _until(lambda: not _degraded(base, "C0000001"))


def test_feedback_contradicting_a_final_outcome_is_409_and_not_recorded(server, workdir):
    base, _ = server
    r = _post(base, "/recommend", json={"customer_id": "C0000002", "channel": "mobile_app", "k": 3})
    decision = r.json()
    assert decision["offers"], decision
    offer = decision["offers"][0]["product_id"]
    body = {"decision_id": decision["decision_id"], "product_id": offer}
    assert _post(base, "/feedback", json={**body, "event": "accept"}).json()["reward"] == 1.0
    r = _post(base, "/feedback", json={**body, "event": "reject"})
    assert r.status_code == 409 and "final" in r.json()["error"]
    assert _post(base, "/feedback", json={**body, "event": "convert"}).status_code == 200  # accept -> convert is fine
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{workdir / 'events.db'}?mode=ro", uri=True)) as conn:
        events = [e for (e,) in conn.execute("SELECT event FROM feedback WHERE decision_id = ? ORDER BY created_at",
                                             (decision["decision_id"],))]
    assert events == ["accept", "convert"]


def test_the_log_and_the_fallback_table_are_owner_only(server, workdir):
    for name in ("events.db", "fallback.db", "events.db-wal"):
        path = workdir / name
        if path.exists():
            assert path.stat().st_mode & 0o777 == 0o600, (name, oct(path.stat().st_mode))
    assert (workdir / "events.db").exists() and (workdir / "fallback.db").exists()


def test_a_corrupted_cached_model_is_fetched_again_before_serving(workdir, tmp_path):
    wd = copy_workdir(workdir, tmp_path / "wd")
    for weights in (wd / "models").rglob("weights.*"):
        data = bytearray(weights.read_bytes())
        for i in range(64):
            data[(i * 7919) % len(data)] ^= 0xFF
        weights.write_bytes(bytes(data))
    with served(wd) as (base, _):
        assert _post(base, "/recommend", json={"customer_id": "C0000001"}).status_code == 200
    log = (wd / "server.log").read_text()
    assert "do not match their SHA-256; downloading again" in log, log[-3000:]


def test_without_models_serve_can_wait_for_them(workdir, tmp_path):
    import sys

    from nextbest.training import registry
    from tests.servers import run_cli

    wd = copy_workdir(workdir, tmp_path / "wd")
    client = registry.tracking(Paths(wd)).MlflowClient()
    versions = {name: client.get_model_version_by_alias(name, "champion").version for name in ("nbp", "churn")}
    for name in versions:
        client.delete_registered_model_alias(name, "champion")
    port = free_port()
    refused = subprocess.run([sys.executable, "-m", "nextbest.cli", "serve", "--port", str(port), "--workdir", str(wd)],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "no champion model 'nbp' or 'churn'" in " ".join(refused.stderr.split())
    log = open(tmp_path / "wait.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "nextbest.cli", "serve", "--wait-for-models", "--port", str(port),
                             "--workdir", str(wd)], start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        reason = _not_ready_for(port, proc)
        assert "no model 'nbp' with alias 'champion'" in reason
        for name, version in versions.items():
            done = run_cli("registry", "promote", name, "--version", str(version), workdir=wd)
            assert done.returncode == 0, done.stderr[-2000:]
        _until(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=3).status_code == 200, 120)
    finally:
        kill_tree(proc)
    reasons = [line.split("loading failed: ")[1] for line in (tmp_path / "wait.log").read_text().splitlines()
               if "loading failed: " in line]
    assert reasons and len(reasons) == len(set(reasons))  # each reason said once while waiting, not every retry


def test_the_monitor_reads_a_log_with_rows_out_of_any_calendar(workdir, tmp_path):
    import sqlite3

    from tests.servers import run_cli

    wd = copy_workdir(workdir, tmp_path / "wd")
    with served(wd) as (base, _):
        assert _post(base, "/recommend", json={"customer_id": "C0000003"}).status_code == 200
    with contextlib.closing(sqlite3.connect(wd / "events.db")) as conn, conn:
        row = conn.execute("SELECT * FROM decisions LIMIT 1").fetchone()
        for i, at in enumerate((-6.2e10, 2.1e9, 1e13)):  # year 0005, 2036, far beyond pandas' calendar
            conn.execute("INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (f"odd{i}", at, *row[2:]))
    proc = run_cli("monitor", workdir=wd)
    assert proc.returncode in (0, 1), proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "OutOfBounds" not in proc.stderr
