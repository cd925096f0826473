"""End to end: a bank edits its catalogue (removes, renames and adds products) and the whole flow
follows with no code change: the simulator, features, Feast, both models, monitoring and serving.

Each catalogue runs as a bank would: `nextbest init`, edit configs/, `nextbest quickstart` from the
project folder (the project and its work directory are found from the current directory).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow

END = "2026-06-30"
# One product renamed in the small catalogue: its id, and so its feature and model output, change.
RENAMED = {"savings_account": ("saver_account", "Saver account")}
SMALL = ("current_account", "debit_card", "savings_account", "consumer_loan", "investment_funds", "home_insurance")
# New products, none with its own simulator behaviour: each behaves like its category's default.
NEW_PRODUCTS = [
    {"product_id": "youth_account", "name": "Youth account", "category": "account", "margin": 15,
     "eligibility": {"min_age": 18, "max_age": 26}},
    {"product_id": "virtual_card", "name": "Virtual card", "category": "card", "margin": 20,
     "eligibility": {"min_age": 18, "requires": ["current_account", "e_account", "youth_account"]}},
    {"product_id": "green_deposit", "name": "Green deposit", "category": "deposit", "margin": 90,
     "eligibility": {"min_age": 18}},
    {"product_id": "kids_savings", "name": "Kids savings plan", "category": "deposit", "margin": 35,
     "eligibility": {"min_age": 25}},
    {"product_id": "student_loan", "name": "Student loan", "category": "loan", "margin": 200,
     "eligibility": {"min_age": 18, "max_age": 35}},
    {"product_id": "overdraft_line", "name": "Overdraft line", "category": "loan", "margin": 150,
     "eligibility": {"min_age": 21, "requires": ["current_account", "payroll_account"]}},
    {"product_id": "robo_advisor", "name": "Robo-advisor portfolio", "category": "investment", "margin": 180,
     "eligibility": {"min_age": 18}},
    {"product_id": "travel_insurance", "name": "Travel insurance", "category": "insurance", "margin": 60,
     "eligibility": {"min_age": 18}},
    {"product_id": "payment_protection", "name": "Payment protection", "category": "insurance", "margin": 90,
     "eligibility": {"min_age": 18, "max_age": 70, "requires": ["consumer_loan", "car_loan", "student_loan"]}},
    {"product_id": "mobile_pay", "name": "Mobile payments", "category": "service", "margin": 10,
     "eligibility": {"min_age": 16}},
]
# Actions are offers that are not products (configs/bandit.yaml `actions`).
ACTIONS = {"retention_call", "payment_help"}


def _small_catalogue(default: list[dict]) -> tuple[list[dict], dict[str, str]]:
    """Six of the defaults, savings_account renamed; returns (products, old id -> new id)."""
    renames = {old: new for old, (new, _) in RENAMED.items()}
    products = []
    for p in default:
        if p["product_id"] not in SMALL:
            continue
        p = {**p, "eligibility": dict(p.get("eligibility", {}))}
        if p["product_id"] in RENAMED:
            p["product_id"], p["name"] = RENAMED[p["product_id"]]
        requires = [renames.get(r, r) for r in p["eligibility"].get("requires", []) if r in SMALL]
        if "requires" in p["eligibility"]:
            p["eligibility"]["requires"] = requires
        products.append(p)
    return products, {p: renames.get(p, p) for p in SMALL}


def _large_catalogue(default: list[dict]) -> tuple[list[dict], dict[str, str]]:
    """The defaults and ten new products across every category."""
    return [*default, *NEW_PRODUCTS], {p["product_id"]: p["product_id"] for p in default}


def _edit_configs(configs: Path, kept: dict[str, str]) -> None:
    """What a bank edits besides products.yaml when products go: every reference to a product is
    renamed (`kept`: old id -> new id) or, for a product that no longer exists, removed."""

    def ids(values: list[str]) -> list[str]:
        return [kept[v] for v in values if v in kept]

    def edit(name: str, change) -> None:
        path = configs / name
        data = yaml.safe_load(path.read_text())
        change(data)
        path.write_text(yaml.safe_dump(data, sort_keys=False))

    def bandit(data: dict) -> None:
        cold = data["cold_start"]
        cold["entry_products"] = ids(cold["entry_products"])
        cold["acceptance"] = {kept[p]: a for p, a in cold["acceptance"].items() if p in kept}
        campaigns = data["holdout"]["campaigns"]
        for name in list(campaigns):
            campaigns[name]["products"] = ids(campaigns[name]["products"])
            if not campaigns[name]["products"]:
                del campaigns[name]
        levers = data["levers"]["products"] or {}
        data["levers"]["products"] = {kept[p]: v for p, v in levers.items() if p in kept}

    def rules(data: dict) -> None:
        data["credit_cooldown"]["products"] = ids(data["credit_cooldown"]["products"])

    def condition(c: dict) -> dict | None:
        """A condition on a product's holding, renamed with it; None for a product that is gone."""
        if not c["feature"].startswith("held_"):
            return c
        product = c["feature"].removeprefix("held_")
        return {**c, "feature": f"held_{kept[product]}"} if product in kept else None

    def rule(r: dict) -> dict | None:
        """The rule without its conditions on products that are gone; None if no condition is left."""
        r = {**r, **{key: [c for c in map(condition, r[key]) if c] for key in ("all", "any") if key in r}}
        return r if r.get("all") or r.get("any") else None

    def segments(data: dict) -> None:
        for group in data["groups"].values():
            group["rules"] = [r for r in map(rule, group["rules"]) if r]
        data["needs"] = {name: r for name, r in ((n, rule(r)) for n, r in data["needs"].items()) if r}

    def campaigns(data: dict) -> None:
        needs = set(yaml.safe_load((configs / "segments.yaml").read_text())["needs"])  # after its edit above
        for name in list(data["campaigns"]):
            campaign = data["campaigns"][name]
            campaign["products"] = ids(campaign["products"])
            campaign["quotas"] = {kept[p]: q for p, q in (campaign.get("quotas") or {}).items() if p in kept}
            audience = campaign.get("audience") or {}
            if "needs" in audience:
                audience["needs"] = [n for n in audience["needs"] if n in needs]
            if not campaign["products"]:
                del data["campaigns"][name]

    edit("bandit.yaml", bandit)
    edit("rules.yaml", rules)
    edit("segments.yaml", segments)
    edit("campaigns.yaml", campaigns)
    # Few epochs and one network: this test is about the flow, not model quality.
    edit("nbp.yaml", lambda d: d.update(max_epochs=3, patience=2, ensemble=1))
    edit("churn.yaml", lambda d: d.update(max_epochs=3, patience=2, ensemble=1))


def _cli_env() -> dict[str, str]:
    """The caller's environment without anything that would point the CLI elsewhere than its cwd."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NEXTBEST_HOME", "NEXTBEST_PROJECT", "NEXTBEST_MLFLOW_URI", "NEXTBEST_MODELS_DIR")}
    env["COLUMNS"] = "500"  # rich wraps at the terminal's width; the printed JSON must stay whole
    return env


def _cli(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nextbest.cli", *args], cwd=cwd, env=_cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def _printed_answer(output: str) -> dict:
    """The /recommend answer quickstart prints (rich's print_json, on stderr): the JSON object that
    starts on a line of its own with '{'."""
    start = output.index("\n{\n") + 1
    answer, _ = json.JSONDecoder().raw_decode(output[start:])
    return answer


@dataclass(frozen=True)
class Project:
    name: str
    root: Path
    products: list[str]
    names: dict[str, str]
    removed: set[str]
    output: str
    returncode: int
    seconds: float

    @property
    def work(self) -> Path:
        return self.root / "work"


@pytest.fixture(scope="module", params=["small_renamed", "large_new"])
def project(request, tmp_path_factory) -> Project:
    root = tmp_path_factory.mktemp(request.param) / "bank"
    init = _cli("init", str(root), cwd=root.parent)
    assert init.returncode == 0, init.stderr[-3000:]
    configs = root / "configs"
    default = yaml.safe_load((configs / "products.yaml").read_text())
    build = _small_catalogue if request.param == "small_renamed" else _large_catalogue
    products, kept = build(default["products"])
    (configs / "products.yaml").write_text(yaml.safe_dump({**default, "products": products}, sort_keys=False))
    _edit_configs(configs, kept)
    # A 400-customer bank over 6 months sees only a handful of churners in its one training month: its
    # owner accepts that in the task configs, as the training error tells them to.
    for task in ("nbp", "churn"):
        cfg = yaml.safe_load((configs / f"{task}.yaml").read_text()) or {}
        (configs / f"{task}.yaml").write_text(yaml.safe_dump({**cfg, "min_positives": 1}, sort_keys=False))

    started = time.perf_counter()
    run = _cli("quickstart", "--customers", "400", "--months", "6", "--end", END, cwd=root)
    seconds = time.perf_counter() - started
    ids = [p["product_id"] for p in products]
    output = run.stdout + run.stderr
    (root / "quickstart.log").write_text(output)
    print(f"\n{request.param}: {len(ids)} products, quickstart {seconds:.0f} s")
    return Project(request.param, root, ids, {p["product_id"]: p["name"] for p in products},
                   {p["product_id"] for p in default["products"]} - set(ids), output, run.returncode, seconds)


def test_quickstart_succeeds_from_the_project_folder(project):
    assert project.returncode == 0, project.output[-6000:]
    # The project was found from the current directory: its work directory, not ./.nextbest.
    assert (project.work / "raw" / "holdings.parquet").exists()
    assert not (project.root / ".nextbest").exists()


def test_every_stage_uses_the_new_catalogue(project):
    assert project.returncode == 0, project.output[-6000:]
    raw = pd.read_parquet(project.work / "raw" / "holdings.parquet", columns=["product_id"])
    assert set(raw.product_id) <= set(project.products)
    assert not set(raw.product_id) & project.removed
    # Products without behaviour of their own are simulated with their category's.
    truth = pd.read_parquet(project.work / "truth" / "acquisition.parquet")
    assert (truth[project.products].mean() > 0).all()
    assert not set(truth.columns) & project.removed

    holdings = pd.read_parquet(project.work / "features" / "customer_holdings.parquet")
    held = sorted(c.removeprefix("held_") for c in holdings.columns
                  if c.startswith("held_") and not c.startswith("held_lag"))
    assert held == sorted(project.products)
    assert not {c for c in holdings.columns for p in project.removed if c.endswith(f"_{p}")}
    if project.name == "small_renamed":
        assert "held_saver_account" in holdings.columns and "held_savings_account" not in holdings.columns
        assert holdings.held_saver_account.sum() > 0  # the renamed product is simulated, held and featurised


def test_registered_models_score_exactly_the_catalogue(project, monkeypatch):
    assert project.returncode == 0, project.output[-6000:]
    from nextbest.settings import Paths
    from nextbest.training.models import ModelMeta
    from nextbest.training.registry import fetch_alias

    for name in ("NEXTBEST_PROJECT", "NEXTBEST_MLFLOW_URI", "NEXTBEST_MODELS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NEXTBEST_HOME", str(project.work))
    paths = Paths.from_workdir(project.work)
    nbp = ModelMeta.from_json((fetch_alias(paths, "nbp").local_dir / "model.json").read_text())
    assert nbp.outputs == project.products
    # The product-held inputs came through the Feast feature service: one per catalogue product.
    for meta in (nbp, ModelMeta.from_json((fetch_alias(paths, "churn").local_dir / "model.json").read_text())):
        inputs = {c.removeprefix("held_") for c in meta.preprocessor.numeric
                  if c.startswith("held_") and not c.startswith("held_lag")}
        assert inputs == set(project.products), meta.task


def test_served_offers_name_only_catalogue_products(project):
    assert project.returncode == 0, project.output[-6000:]
    answer = _printed_answer(project.output)
    assert answer["offers"], answer
    offered = {o["product_id"] for o in answer["offers"]}
    assert offered <= set(project.products) | ACTIONS, answer
    assert not offered & project.removed
    for offer in answer["offers"]:
        assert offer["product_id"] in ACTIONS or offer["name"] == project.names[offer["product_id"]], offer


def test_monitoring_report_written(project):
    assert project.returncode == 0, project.output[-6000:]
    reports = sorted(p for p in (project.work / "reports").iterdir() if p.is_dir())
    assert reports
    summary = json.loads((reports[-1] / "summary.json").read_text())
    # Feature drift covers every catalogue product's holding, prediction drift every product's score.
    columns = set(summary["columns"])
    assert {f"held_{p}" for p in project.products} <= columns
    assert not {c for c in columns for p in project.removed if c.endswith(f"_{p}")}
    assert set(summary["sections"]["prediction_drift"]["products"]["columns"]) == set(project.products)
