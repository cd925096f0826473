"""The monitor's index page reads as words: the verdict and why, values with units, each report once."""

from __future__ import annotations

import re
from pathlib import Path

from nextbest.monitoring.index_page import index_html


def summary(served_rows: int | None = 2, churn_gap: float = 0.0009368121839951789) -> dict:
    sections = {"feature_drift": {"share_drifted": 0.00684931506849315},
                "prediction_drift": {"drifted_products": ["debit_card"]},
                "acceptance": {"status": "no decision log (events.db) yet"},
                "churn": {"calibration_gap": churn_gap, "limit": 0.05, "passed": True}}
    if served_rows is not None:
        sections["served_feature_drift"] = {"current": {"source": "events.db served_features", "rows": served_rows}}
    return {"created_at": "2026-12-07T18:00:00Z", "passed": False, "drifted_columns": ["balance_mean_3m"],
            "share_drifted": 0.0068, "columns": {f"c{i}": {"drifted": i == 0} for i in range(146)},
            "sections": sections,
            "gate": {"passed": False, "checks": [
                {"check": "feature_drift: share of drifted columns", "value": 0.00684931506849315, "limit": 0.02,
                 "passed": True},
                {"check": "feature_drift: columns that must never drift", "value": [],
                 "limit": ["gender", "region", "income_missing", "marketing_opt_out"], "passed": True},
                {"check": "prediction_drift: products whose scores drifted", "value": ["debit_card"], "limit": 0,
                 "passed": False},
                {"check": "churn", "value": churn_gap, "limit": 0.05, "passed": True}]}}


def test_the_page_says_why_the_gate_failed_with_units(tmp_path):
    files = {k: tmp_path / n for k, n in (("summary", "summary.json"), ("data_drift_html", "data_drift.html"),
                                          ("data_drift_json", "data_drift.json"), ("kpis_html", "kpis.html"))}
    (tmp_path / "ope.json").write_text("{}")
    page = index_html(summary(), files)
    text = re.sub(r"<[^>]+>", " ", page)
    assert "The gate failed : 1 of 4 checks did not pass (products whose model scores drifted)" in " ".join(
        text.split())
    assert "0.7%" in text and "at most 2.0%" in text  # shares as percentages
    assert "0.09 percentage points" in text and "at most 5.00 points" in text  # the churn gap in points
    assert "none of gender, region, income_missing, marketing_opt_out" in text
    assert "0.0009368121839951789" not in page and "[" not in text  # no raw floats, no JSON lists
    links = re.findall(r"href='([^']+)'", page)
    assert sorted(links) == sorted(set(links))  # each report linked once
    assert {"summary.json", "ope.json", "kpis.html", "data_drift.html"} <= set(links)
    assert "acceptance: no decision log (events.db) yet" in text
    assert "<style>" in page and "1 of 146 feature columns drifted: balance_mean_3m" in " ".join(text.split())


def test_drift_on_a_handful_of_served_rows_is_flagged():
    page = index_html(summary(served_rows=2), {"summary": Path("/r/summary.json")})
    assert "rests on 2 served requests only" in page
    assert "rests on" not in index_html(summary(served_rows=5000), {"summary": Path("/r/summary.json")})
    assert "rests on" not in index_html(summary(served_rows=None), {"summary": Path("/r/summary.json")})
