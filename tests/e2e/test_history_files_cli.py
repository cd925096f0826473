"""`nextbest uplift --from FILE` and `nextbest ope --from FILE` as a user runs them: results from a
campaign file and from a logged-bandit file, a one-line error for a bad one."""

from __future__ import annotations

import json

import pandas as pd

from tests.servers import run_cli
from tests.unit.test_ope_file import logged_file
from tests.unit.test_uplift_file import campaign


def test_uplift_from_a_campaign_file_writes_the_report(tmp_path):
    path = tmp_path / "spring campaign.csv"
    campaign(6_000)[0].to_csv(path, sep="\t", index=False)
    proc = run_cli("uplift", "--from", str(path), "--treatment", "arm", "--outcome", "bought", "--value", "revenue",
                   "--segment", "region", "--id", "customer_id", workdir=tmp_path / "wd")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "wd" / "reports" / "uplift" / "spring campaign"
    result = json.loads((out / "uplift.json").read_text())
    assert result["rows"] == 6_000 and sorted(result["comparisons"]) == ["call", "email"]
    assert "call vs control: conversion" in " ".join(proc.stderr.split())
    for name in ("uplift.html", "qini_call.csv", "qini_email.csv", "scores.parquet"):
        assert (out / name).exists()


def test_a_bad_campaign_file_is_one_clear_line(tmp_path):
    path = tmp_path / "one-arm.csv"
    campaign(500)[0].assign(arm="email").to_csv(path, index=False)
    proc = run_cli("uplift", "--from", str(path), "--treatment", "arm", "--outcome", "bought", workdir=tmp_path / "wd")
    assert proc.returncode == 2
    assert "'arm' (treatment) has one arm only: 'email'" in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "wd" / "reports" / "uplift").exists()


def test_ope_from_a_logged_bandit_file(tmp_path):
    log, _ = logged_file(3_000, positions=2)
    log.to_csv(tmp_path / "slates.csv", index=False)
    pd.DataFrame({"action": ["card", "savings"], "probability": [0.5, 0.5]}).to_csv(tmp_path / "half.csv", index=False)
    proc = run_cli("ope", "--from", str(tmp_path / "slates.csv"), "--action", "offer", "--propensity", "p",
                   "--reward", "accepted", "--decision", "decision", "--position", "slot", "--policy",
                   str(tmp_path / "half.csv"), workdir=tmp_path / "wd")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "wd" / "reports" / "ope" / "slates" / "ope.json").read_text())
    assert result["decisions"] == 3_000 and set(result["policies"]) == {"uniform", "logged", "policy half.csv"}
    assert "value per decision, 3,000 logged decisions" in " ".join(proc.stderr.split())
    bad = run_cli("ope", "--from", str(tmp_path / "slates.csv"), "--action", "offer", "--propensity", "age",
                  "--reward", "accepted", workdir=tmp_path / "wd")
    assert bad.returncode == 2 and "'age' (propensity) has the value" in " ".join(bad.stderr.split())
    assert "Traceback" not in bad.stderr
