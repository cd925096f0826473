"""`nextbest build`: a Bento that carries the code, the project's configs and the champions pinned by
version; `bentoml serve <tag>` from another directory answers /recommend without the registry."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest

from tests.servers import copy_workdir, latest_customers, run_cli, served

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bento_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bentoml-home")


def test_build_without_a_champion_says_which_model_is_missing(tmp_path, bento_home):
    proc = run_cli("build", workdir=tmp_path / "empty", env={"BENTOML_HOME": str(bento_home)})
    assert proc.returncode == 2, proc.stderr
    assert "no champion for model 'nbp'" in proc.stderr and "nextbest train nbp" in proc.stderr
    assert "Traceback" not in proc.stderr and not (bento_home / "bentos").exists()


def test_the_bento_serves_recommend_from_any_directory_with_its_pinned_models(quickstart_workdir, tmp_path,
                                                                              bento_home):
    wd = copy_workdir(quickstart_workdir, tmp_path / "wd")
    env = {"BENTOML_HOME": str(bento_home)}
    proc = run_cli("build", workdir=wd, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tag = proc.stdout.strip().splitlines()[-1]
    assert tag.startswith("nextbest:")
    bento = bento_home / "bentos" / "nextbest" / tag.split(":")[1] / "src"
    pinned = json.loads((bento / "models" / "pinned.json").read_text())
    assert {name: p["version"] for name, p in pinned.items()} == {"nbp": "1", "churn": "1"}
    for part in ("features", "training", "serving", "feature_repo", "monitoring", "simulation", "configs"):
        assert (bento / "nextbest" / part / "__init__.py").is_file(), part
    assert (bento / "project" / "configs" / "products.yaml").is_file()
    assert (bento / "nextbest" / "feature_repo" / "feature_store.yaml").is_file()  # package data travels too

    # Served from an unrelated directory, with the registry out of reach: the models come from the Bento.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bentoml = Path(sys.executable).with_name("bentoml")
    serve_env = {**env, "NEXTBEST_HOME": str(wd), "NEXTBEST_MLFLOW_URI": f"sqlite:///{tmp_path / 'no' / 'mlflow.db'}",
                 "BENTOML_DO_NOT_TRACK": "True"}
    with served(wd, env=serve_env, log_name="bento.log", cwd=elsewhere,
                command=lambda port: [str(bentoml), "serve", tag, "--port", str(port)]) as (base, _):
        customer = latest_customers(wd)[0]
        resp = httpx.post(f"{base}/recommend", json={"customer_id": customer, "channel": "web", "k": 2}, timeout=30)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["model_versions"] == {"nbp": "1", "churn": "1"}
        assert body["offers"] and all(o["propensity"] > 0 for o in body["offers"])
    assert not (tmp_path / "no").exists()  # nothing opened the registry
