"""The uplift model learnt from the decision log's control groups on the quickstart bank: customers
whose offers change them are ranked first, the model is tracked, registered and promoted in MLflow,
loads without unpickling, and too little data is one clear line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.servers import copy_workdir, latest_customers, run_cli

pytestmark = pytest.mark.slow
DAY = 86400.0


def _campaign_log(wd, seed: int = 0) -> tuple[float, dict]:
    """Every customer decided once, half at random in the global control group; treated customers
    under 45 convert at 40%, everyone else at 5%. Returns (outcomes' as-of time, pseudonym -> young)."""
    from nextbest.serving.eventlog import EventLog
    from nextbest.serving.privacy import load_key, pseudonymise

    rng = np.random.default_rng(seed)
    profile = pd.read_parquet(wd / "features" / "customer_profile.parquet", columns=["customer_id", "event_timestamp",
                                                                                     "age"])
    last = profile["event_timestamp"].max()
    age = profile[profile["event_timestamp"] == last].set_index("customer_id")["age"]
    t0 = last.timestamp() + DAY
    key = load_key(wd)
    events = EventLog(wd / "events.db")
    young = {}
    for i, cid in enumerate(latest_customers(wd)):
        p = pseudonymise(cid, key)
        group = "control" if rng.random() < 0.5 else "treatment"
        young[p] = bool(age.get(cid, 60) < 45)
        events.log_decision(f"d{i}", p, "email", 1, [] if group == "control" else [
            {"product_id": "savings_account", "rank": 1, "propensity": 1.0}], {},
            {"groups": {"all": group}, "segment": "regular"}, at=t0 + i)
        rate = 0.4 if group == "treatment" and young[p] else 0.05
        if rng.random() < rate:
            events.log_customer_event(f"e{i}", p, "product_acquired", {"product_id": "savings_account"},
                                      t0 + i + 3 * DAY)
    events.close()
    return t0 + 40 * DAY, young


def test_the_uplift_model_ranks_the_changed_customers_first_and_is_registered(quickstart_workdir, tmp_path):
    from nextbest.monitoring.uplift_model import train_uplift
    from nextbest.settings import Paths
    from nextbest.training.registry import alias_version, fetch_alias, tracking
    from nextbest.training.uplift import UpliftModel

    wd = copy_workdir(quickstart_workdir, tmp_path / "wd")
    paths = Paths.from_workdir(wd)
    until, young = _campaign_log(wd)
    first = train_uplift(paths, "all", 30, until=until)
    assert first["promoted"] and first["version"] == "1" and first["reason"].startswith("first uplift model")
    assert first["units"]["control"] > 300 and first["units"]["treatment"] > 300 and first["dropped"] == 0
    # The young treated convert far more: both learners find them, near what knowing the truth gives.
    from nextbest.monitoring.uplift import campaign_units
    from nextbest.config import load_catalogue
    from nextbest.training.uplift import curves

    units = campaign_units(paths.events_db, load_catalogue(), until=until)
    truth = curves(units["pseudonym"].map(young).to_numpy(float), units["converted"].to_numpy(float),
                   (units["group"] == "treatment").to_numpy()).qini_coefficient
    for learner in ("x_learner", "t_learner"):
        assert first["metrics"][learner]["qini_coefficient"] > 0.6 * truth > 0
    assert first["learner"] == max(first["metrics"], key=lambda k: first["metrics"][k]["qini_coefficient"])
    assert alias_version(paths, "uplift") == "1"
    registered = fetch_alias(paths, "uplift")
    files = {p.name for p in registered.local_dir.iterdir()}
    assert "model.json" in files and len(files) == 3  # and the learner's two LightGBM text files
    assert not list(registered.local_dir.glob("*.pkl")) and not list(registered.local_dir.glob("*.pickle"))
    model = UpliftModel.load(registered.local_dir)
    ages = pd.DataFrame({"age": [30.0, 70.0]})
    young_score, old_score = model.score(ages)
    assert young_score > old_score + 0.1
    run = tracking(paths).MlflowClient().get_run(first["run_id"])
    assert run.data.metrics["x_learner_qini"] == pytest.approx(first["metrics"]["x_learner"]["qini_coefficient"])
    artifacts = {a.path for a in tracking(paths).MlflowClient().list_artifacts(first["run_id"], "qini")}
    assert {"qini/qini.csv", "qini/metrics.json"} <= artifacts

    # Retrained on the same units: compared with the champion on them before any promotion.
    again = train_uplift(paths, "all", 30, until=until, seed=7)
    assert again["version"] == "2" and again["champion_qini"] is not None
    assert again["promoted"] == (again["metrics"]["x_learner"]["qini_coefficient"] > again["champion_qini"])
    assert alias_version(paths, "uplift") == ("2" if again["promoted"] else "1")
    history = run_cli("registry", "history", "uplift", workdir=wd)
    assert history.returncode == 0 and "promote" in history.stdout and "v1" in history.stdout, history.stderr[-2000:]


def test_too_little_data_and_an_unknown_campaign_are_one_line(quickstart_workdir, tmp_path):
    wd = copy_workdir(quickstart_workdir, tmp_path / "wd")
    proc = run_cli("train", "uplift", workdir=wd)
    message = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "has 0 control and 0 treatment customers" in message, message[-2000:]
    assert "Traceback" not in proc.stderr
    proc = run_cli("train", "uplift", "--campaign", "nope", workdir=wd)
    message = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "no campaign 'nope'" in message and "deposits" in message, message[-2000:]
