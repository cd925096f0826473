"""`nextbest plan`: one outbound campaign's contacts for one day (registered in nextbest/cli/commands.py)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Optional

import typer

from nextbest.cli.common import WorkdirOpt


def plan(
    campaign: str = typer.Option(..., "--campaign", help="A campaign of configs/campaigns.yaml."),
    day: str = typer.Option(..., "--date", help="The day to plan, YYYY-MM-DD."),
    out: Optional[Path] = typer.Option(None, help="Folder for the contact lists and report "
                                       "(default: <workdir>/plans/<campaign>-<date>)."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Plan a campaign's contacts for a day: every customer of its audience scored through the serving rules,
    at most one contact each, within each channel's capacity, the quotas and the budget; the contacts are
    logged as decisions and written as one list per channel with a report."""
    from rich.table import Table

    from nextbest.cli.common import StageError, console, run_stage, workdir_paths

    try:
        when = datetime.strptime(day, "%Y-%m-%d").date()
    except ValueError:
        run_stage(_fail, StageError(f"--date must be YYYY-MM-DD, got {day!r}"))
        return
    paths = workdir_paths(workdir)

    def go():
        from nextbest.serving.outbound import plan_campaign, write_plan

        with console.status("planning") as status:
            result = plan_campaign(paths, campaign, when, progress=lambda m: status.update(m))
        target = out or paths.root / "plans" / f"{campaign}-{when.isoformat()}"
        return result, write_plan(result, target, paths.events_db)

    result, files = run_stage(go)
    s = result.summary
    v = s["value"]
    table = Table(title=f"campaign {campaign}, {when.isoformat()}: {s['contacts']:,} contacts, "
                        f"{s['control_withheld']:,} withheld (control)")
    for col in ("channel", "capacity", "contacts", "control"):
        table.add_column(col, justify="left" if col == "channel" else "right")
    for ch, d in s["channels"].items():
        table.add_row(ch, f"{d['capacity']:,}", f"{d['contacts']:,}", f"{d['withheld']:,}")
    console.print(table)
    console.print(f"expected value {v['plan']:,.2f} EUR = {v['plan_over_bound']:.4f} x the LP bound "
                  f"({v['lp_bound']:,.2f}); greedy by score {v['greedy_over_bound']:.4f}")
    if s["unfilled_channels"]:
        console.print(f"[yellow]capacity not filled[/] on {', '.join(s['unfilled_channels'])}")
    for kind, path in files.items():
        console.print(f"{kind}: {path}")


def _fail(exc: Exception):
    raise exc

