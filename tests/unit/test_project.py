"""A bank's project folder: `nextbest init`, the one rule that finds configs and the work directory
(`nextbest info`), and configs validated before any work."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from nextbest.cli import app
from nextbest.config import CONFIG_NAMES, load_catalogue
from nextbest.settings import Paths, config_file, default_config_dir, find_project, resolve_mlflow_uri


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No project or work directory from the environment; the current directory is an empty folder."""
    for var in ("NEXTBEST_PROJECT", "NEXTBEST_HOME", "NEXTBEST_MLFLOW_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_init_writes_a_project_with_every_default_config(clean_env):
    result = CliRunner().invoke(app, ["init", "bank"])
    assert result.exit_code == 0, result.output
    root = clean_env / "bank"
    assert yaml.safe_load((root / "nextbest.yaml").read_text()) == {"name": "bank", "workdir": "work"}
    assert (root / "work").is_dir() and "configs/products.yaml" in (root / "README.md").read_text()
    for name in (*CONFIG_NAMES, "adapters/santander_products.yaml"):
        assert (root / "configs" / name).read_bytes() == (default_config_dir() / name).read_bytes(), name
    assert not list((root / "configs").rglob("*.py"))  # templates only, no package code


def test_init_refuses_a_folder_that_is_not_empty_unless_forced(clean_env):
    target = clean_env / "existing"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(app, ["init", str(target)])
    assert result.exit_code == 2 and "not empty" in result.output and "--force" in result.output
    assert not (target / "nextbest.yaml").exists()
    result = CliRunner().invoke(app, ["init", str(target), "--force", "--name", "retail"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((target / "nextbest.yaml").read_text())["name"] == "retail"
    assert (target / "notes.txt").read_text() == "keep me"


def test_project_is_found_from_below_it_from_its_work_dir_and_from_the_environment(clean_env, monkeypatch):
    CliRunner().invoke(app, ["init", "bank"])
    root = clean_env / "bank"
    assert find_project() is None and config_file("products.yaml") == default_config_dir() / "products.yaml"
    assert Paths.from_workdir().root == clean_env / ".nextbest"
    (root / "work" / "raw").mkdir(parents=True)
    monkeypatch.chdir(root / "work" / "raw")
    assert find_project() == root and config_file("rules.yaml") == root / "configs" / "rules.yaml"
    assert Paths.from_workdir().root == root / "work"
    # A config the project deleted falls back to the package default.
    (root / "configs" / "rules.yaml").unlink()
    assert config_file("rules.yaml") == default_config_dir() / "rules.yaml"
    monkeypatch.chdir(clean_env)
    monkeypatch.setenv("NEXTBEST_HOME", str(root / "work"))
    assert find_project() == root
    monkeypatch.delenv("NEXTBEST_HOME")
    monkeypatch.setenv("NEXTBEST_PROJECT", str(root))
    assert find_project() == root and Paths.from_workdir().root == root / "work"
    # The MLflow URI: the environment, else nextbest.yaml, else the work directory's SQLite file.
    paths = Paths.from_workdir()
    assert resolve_mlflow_uri(paths) == f"sqlite:///{root / 'work' / 'mlflow' / 'mlflow.db'}"
    (root / "nextbest.yaml").write_text("name: bank\nmlflow_uri: http://127.0.0.1:5999\n")
    assert resolve_mlflow_uri(paths) == "http://127.0.0.1:5999"
    monkeypatch.setenv("NEXTBEST_MLFLOW_URI", "http://127.0.0.1:5000")
    assert resolve_mlflow_uri(paths) == "http://127.0.0.1:5000"


def test_a_renamed_product_in_the_project_is_the_catalogue(clean_env, monkeypatch):
    CliRunner().invoke(app, ["init", "bank"])
    path = clean_env / "bank" / "configs" / "products.yaml"
    path.write_text(path.read_text().replace("product_id: fx_service,", "product_id: travel_money,"))
    monkeypatch.chdir(clean_env / "bank")
    ids = load_catalogue().ids
    assert "travel_money" in ids and "fx_service" not in ids


def test_info_prints_the_rule_and_where_each_setting_comes_from(clean_env, monkeypatch):
    CliRunner().invoke(app, ["init", "bank"])
    monkeypatch.chdir(clean_env / "bank")
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"project:        {clean_env / 'bank'}" in out and f"work directory: {clean_env / 'bank' / 'work'}" in out
    assert f"config products.yaml: {clean_env / 'bank' / 'configs' / 'products.yaml'}  (project)" in out
    assert "Rule: project = $NEXTBEST_PROJECT" in out and "configs: valid" in out


@pytest.mark.parametrize("name, edit, expected", [
    ("products.yaml", lambda t: t.replace("margin: 140,", "margin: -5,"),
     r"products.yaml: field products.4.margin: .* \(got -5\)"),
    ("bandit.yaml", lambda t: t.replace("explore_share: 0.1", "explore_share: 2"),
     r"bandit.yaml: field explore_share: .* \(got 2"),
    ("rules.yaml", lambda t: t.replace("products: [credit_card, cashback_card]", "products: [gold_card]"),
     r"rules.yaml: field credit_cooldown.products: unknown product\(s\) \['gold_card'\]"),
    ("monitoring.yaml", lambda t: t + "\nunknown_section: 1\n", r"monitoring.yaml: field unknown_section"),
    ("products.yaml", lambda t: t.replace("product_id: salary_project,", "product_id: salary_service,"),
     r"segments.yaml: field groups.relationship: rule 'social' uses \['held_salary_project'\], but products.yaml has "
     r"no product \['salary_project'\]"),
    ("../nextbest.yaml", lambda t: t + "mlflow_url: http://x\n", r"nextbest.yaml: field mlflow_url: .*"),
])
def test_an_invalid_project_config_stops_every_command_before_any_work(clean_env, monkeypatch, name, edit, expected):
    CliRunner().invoke(app, ["init", "bank"])
    path = (clean_env / "bank" / "configs" / name).resolve()
    named = (clean_env / "bank" / "configs" / ("segments.yaml" if "segments.yaml" in expected else name)).resolve()
    path.write_text(edit(path.read_text()))
    monkeypatch.chdir(clean_env / "bank")
    for args in (["generate", "--customers", "50", "--months", "4"], ["features", "build"], ["info"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert str(named) in " ".join(result.output.split()) and "Traceback" not in result.output
        import re

        assert re.search(expected, " ".join(result.output.split())), result.output
    assert not list((clean_env / "bank" / "work").rglob("*.parquet"))  # nothing was generated


def test_a_work_dir_inside_a_project_brings_its_configs_from_anywhere(clean_env, monkeypatch):
    CliRunner().invoke(app, ["init", "bank"])
    rules = clean_env / "bank" / "configs" / "rules.yaml"
    rules.write_text(rules.read_text().replace("rejection_cooldown_days: 30", "rejection_cooldown_days: -1"))
    elsewhere = clean_env / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = CliRunner().invoke(app, ["generate", "--customers", "50", "--months", "4",
                                      "--workdir", str(clean_env / "bank" / "work")])
    flat = " ".join(result.output.split())
    assert result.exit_code == 2 and f"{rules}: field rejection_cooldown_days" in flat, result.output
    assert not list((clean_env / "bank" / "work").rglob("*.parquet"))
