"""`configs/campaigns.yaml`: a bad campaign stops `nextbest plan` (and every command) before any
work, with one line naming the file, field and value."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from nextbest.cli import app
from nextbest.config import ConfigError, load_campaigns, load_catalogue, load_rules, load_segments


@pytest.fixture
def project(monkeypatch, tmp_path):
    for var in ("NEXTBEST_PROJECT", "NEXTBEST_HOME", "NEXTBEST_MLFLOW_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(app, ["init", "bank"]).exit_code == 0
    monkeypatch.chdir(tmp_path / "bank")
    return tmp_path / "bank"


def test_the_default_campaigns_are_valid():
    catalogue = load_catalogue()
    cfg = load_campaigns(catalogue=catalogue, segments=load_segments(catalogue=catalogue),
                         rules=load_rules(catalogue=catalogue))
    assert cfg.campaigns and all(c.window.hours for c in cfg.campaigns.values())


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace("investment_funds, pension_plan, brokerage]", "investment_funds, gold_deposit, brokerage]"),
     r"field campaigns.savings.products: unknown product\(s\) \['gold_deposit'\]"),
    (lambda t: t.replace("      sms: {capacity: 50, cost: 0.08}", "      fax: {capacity: 50, cost: 0.08}"),
     r"field campaigns.savings.channels.fax.\[key\]: .*(got 'fax')"),
    (lambda t: t.replace("      sms: {capacity: 50, cost: 0.08}", "      mobile_app: {capacity: 50, cost: 0.08}"),
     r"field campaigns.savings: .*channels \['mobile_app'\] are not outbound channels"),
    (lambda t: t.replace("      needs: [saving, preservation]", "      segments: {relationship: [vip]}"),
     r"field campaigns.savings.audience.segments.relationship: unknown segment\(s\) \['vip'\]"),
    (lambda t: t.replace("      needs: [saving, preservation]", "      segments: {tier: [gold]}"),
     r"field campaigns.savings.audience.segments: unknown segment group 'tier'"),
    (lambda t: t.replace("email: {capacity: 300, cost: 0.02}", "email: {capacity: -3, cost: 0.02}", 1),
     r"field campaigns.savings.channels.email.capacity: .*(got -3)"),
    (lambda t: t.replace("hours: [8, 10, 12, 14, 17, 19]", "hours: []"),
     r"field campaigns.savings.window.hours: .*at least 1 item"),
    (lambda t: t.replace("hours: [8, 10, 12, 14, 17, 19]", "hours: [8, 25]"),
     r"field campaigns.savings.window.hours: .*send hours must be 0-23, got \[25\]"),
    (lambda t: t.replace("quotas: {term_deposit: 60}", "quotas: {mortgage: 60}"),
     r"field campaigns.savings: .*quotas name products \['mortgage'\] that are not in this campaign's products"),
])
def test_a_bad_campaign_is_one_clear_error_before_any_work(project, edit, expected):
    path = (project / "configs" / "campaigns.yaml").resolve()
    text = path.read_text()
    assert edit(text) != text
    path.write_text(edit(text))
    for args in (["plan", "--campaign", "savings", "--date", "2026-12-07"], ["info"]):
        result = CliRunner().invoke(app, args)
        out = " ".join(result.output.split())
        assert result.exit_code == 2, (args, result.output)
        assert str(path) in out and "Traceback" not in result.output
        assert re.search(expected, out), out
    assert not list((project / "work").rglob("*.db"))  # nothing was planned or logged


def test_an_unknown_campaign_or_a_bad_date_is_refused(project):
    result = CliRunner().invoke(app, ["plan", "--campaign", "winter", "--date", "2026-12-07"])
    assert result.exit_code == 2 and "unknown campaign 'winter'" in result.output
    result = CliRunner().invoke(app, ["plan", "--campaign", "savings", "--date", "07/12/2026"])
    assert result.exit_code == 2 and "--date must be YYYY-MM-DD, got '07/12/2026'" in result.output
    result = CliRunner().invoke(app, ["plan", "--campaign", "savings", "--date", "2026-12-06"])
    assert result.exit_code == 2 and "2026-12-06 is a sun, outside its send days" in " ".join(result.output.split())


def test_load_campaigns_names_the_file(tmp_path):
    path = tmp_path / "campaigns.yaml"
    path.write_text("version: 1\ncampaigns:\n  all: {products: [e_account], channels: {email: {capacity: 1}}, "
                    "window: {hours: [9]}}\n")
    with pytest.raises(ConfigError, match="reserved for the global control group"):
        load_campaigns(path)
