"""`nextbest uplift --from FILE`: the uplift report of any campaign history (registered in nextbest/cli/commands.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nextbest.cli.common import WorkdirOpt


def uplift(
    source: Path = typer.Option(..., "--from", help="Campaign history: CSV (, ; tab or | separated) or parquet, "
                                "one row per customer."),
    treatment: str = typer.Option(..., help="Column of the arm each customer was assigned (control or a "
                                  "treatment; several treatments allowed)."),
    outcome: str = typer.Option(..., help="Column of the outcome: 0/1, yes/no, true/false, or a number."),
    value: Optional[str] = typer.Option(None, help="Column of each customer's value (default: a numeric outcome "
                                        "itself, else none)."),
    segment: Optional[str] = typer.Option(None, help="Column to break the uplift down by."),
    control: Optional[str] = typer.Option(None, help="The treatment column's value for the control group "
                                          "(default: found when one value reads control, holdout, 0, no, ...)."),
    id_column: Optional[str] = typer.Option(None, "--id", help="Column of the customer id: never a model input; "
                                            "the key of scores.parquet."),
    features: Optional[str] = typer.Option(None, help="Comma-separated model inputs (default: every other column)."),
    confidence: float = typer.Option(0.95, min=0.5, max=0.999, help="Interval confidence."),
    out: Optional[Path] = typer.Option(None, help="Report folder (default: <workdir>/reports/uplift/<file name>)."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Which customers did a campaign change: conversion and value uplift per arm and segment with intervals,
    T-, X- and DR-learner uplift models (cross-fitted) with Qini curves, the observed uplift per fifth of
    predicted uplift, and a randomisation check. Writes uplift.json, uplift.html, qini_<arm>.csv and
    scores.parquet (each customer's predicted uplift per arm)."""
    from nextbest.cli.common import console, run_stage, workdir_paths

    paths = workdir_paths(workdir)

    def go():
        from nextbest.monitoring.uplift_file import campaign_uplift, write_report

        with console.status("measuring uplift"):
            result, scores = campaign_uplift(
                source, treatment, outcome, value=value, segment=segment, control=control, id_column=id_column,
                features=[c.strip() for c in features.split(",") if c.strip()] if features else None,
                confidence=confidence)
        target = out or paths.root / "reports" / "uplift" / source.name.split(".")[0]
        return result, write_report(result, scores, target)

    result, files = run_stage(go)
    for w in result["warnings"]:
        console.print(f"[yellow]warning:[/] {w}")
    for arm, c in result["comparisons"].items():
        o = c["overall"]
        line = f"{arm} vs {result['control']}: "
        if o["uplift"] is None:
            line += "no rows to compare"
        else:
            line += (f"conversion {100 * o['rate_treatment']:.2f}% vs {100 * o['rate_control']:.2f}%, uplift "
                     f"{100 * o['uplift']:+.2f} pp [{100 * o['uplift_ci'][0]:+.2f}, {100 * o['uplift_ci'][1]:+.2f}]")
        if "models" in c:
            line += "; Qini " + ", ".join(f"{k.replace('_', '-')} {v['qini_coefficient']:.5f}"
                                          for k, v in c["models"].items())
        console.print(line)
    console.print(f"{result['rows']:,} rows in {result['seconds']:.1f} s")
    for kind, path in files.items():
        console.print(f"{kind}: {path}")
