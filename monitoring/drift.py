"""Evidently data-drift reports: feature values of the latest snapshot against a reference window."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP


@dataclass(frozen=True)
class DriftSummary:
    drifted_columns: list[str]
    share_drifted: float
    columns: dict[str, dict]  # column -> {"score", "test", "threshold", "drifted"}
    reference_rows: int
    current_rows: int

    def to_dict(self) -> dict:
        return {"drifted_columns": self.drifted_columns, "share_drifted": self.share_drifted,
                "columns": self.columns, "reference_rows": self.reference_rows,
                "current_rows": self.current_rows}


def split_windows(features: pd.DataFrame, reference_months: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Current = the latest snapshot; reference = the given months, else every earlier snapshot."""
    ts = pd.to_datetime(features[EVENT_TIMESTAMP])
    latest = ts.max()
    current = features[ts == latest]
    if reference_months:
        months = pd.to_datetime(reference_months)
        ref_mask = ts.dt.tz_localize(None).dt.normalize().isin(months)
    else:
        ref_mask = ts < latest
    return features[ref_mask], current


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str] | None = None):
    """Runs Evidently's DataDriftPreset; returns (evidently snapshot, DriftSummary)."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    drop = [c for c in (CUSTOMER_ID, EVENT_TIMESTAMP) if c in reference.columns]
    cols = columns or [c for c in reference.columns if c not in drop]
    report = Report([DataDriftPreset(columns=cols)])
    snapshot = report.run(current_data=current[cols].reset_index(drop=True),
                          reference_data=reference[cols].reset_index(drop=True))
    return snapshot, summarize(snapshot.dict(), len(reference), len(current))


def summarize(result: dict, reference_rows: int, current_rows: int) -> DriftSummary:
    """Extracts per-column drift from an Evidently snapshot dict."""
    columns: dict[str, dict] = {}
    share = 0.0
    for metric in result.get("metrics", []):
        name = metric.get("metric_name", "")
        config = metric.get("config", {})
        if name.startswith("ValueDrift"):
            column = config.get("column")
            score = float(metric["value"])
            threshold = float(config.get("threshold", 0.05))
            method = config.get("method", "")
            # p-value tests drift when below the threshold, distances when above it.
            is_pvalue = "p_value" in method or "test" in method.lower()
            drifted = score < threshold if is_pvalue else score >= threshold
            columns[column] = {"score": score, "test": method, "threshold": threshold, "drifted": bool(drifted)}
        elif name.startswith("DriftedColumnsCount"):
            share = float(metric["value"]["share"])
    drifted = sorted(c for c, v in columns.items() if v["drifted"])
    if columns and not share:
        share = len(drifted) / len(columns)
    return DriftSummary(drifted, share, columns, reference_rows, current_rows)


def write_report(snapshot, summary: DriftSummary, out_dir: Path, name: str = "data_drift") -> dict[str, Path]:
    """Writes `<name>.html`, `<name>.json` (Evidently) and `summary.json` atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"html": out_dir / f"{name}.html", "json": out_dir / f"{name}.json", "summary": out_dir / "summary.json"}

    def atomic(target: Path, write) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=out_dir)
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    atomic(paths["html"], lambda t: snapshot.save_html(t))
    atomic(paths["json"], lambda t: Path(t).write_text(json.dumps(snapshot.dict(), default=str, indent=1)))
    atomic(paths["summary"], lambda t: Path(t).write_text(json.dumps(summary.to_dict(), indent=2)))
    return paths
