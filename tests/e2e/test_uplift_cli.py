"""`nextbest uplift --from FILE` as a user runs it: a report folder from a campaign file, a one-line
error for a bad one."""

from __future__ import annotations

import json

from tests.servers import run_cli
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
