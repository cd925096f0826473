"""`nextbest simulate`: the replay simulator from the command line (registered in nextbest/cli/commands.py);
with `--outbound`, weekly outbound campaigns in closed loop against the simulator's truth.

The simulator and its libraries (torch, Feast, MABWiser, Vowpal Wabbit) load inside the command,
so `nextbest --help` stays fast.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from nextbest.cli.common import WorkdirOpt
from nextbest.constants import DEFAULT_SEED


class PolicyName(str, Enum):
    nextbest = "nextbest"
    greedy = "greedy"
    epsilon_greedy = "epsilon_greedy"
    linucb = "linucb"
    lints = "lints"
    vw = "vw"
    oracle = "oracle"
    uplift_oracle = "uplift_oracle"
    random = "random"


def simulate(
    policy: PolicyName = typer.Option(PolicyName.nextbest, help="The policy on the decision path (nextbest: the "
                                      "served bandit, learning online through the engine)."),
    steps: int = typer.Option(10_000, min=1, help="Requests to replay."),
    seed: int = typer.Option(DEFAULT_SEED, help="Seed of the traffic, the answers and the baselines."),
    k: int = typer.Option(1, min=1, max=10, help="Offers per decision."),
    compare: Optional[list[PolicyName]] = typer.Option(None, help="Baselines scored on the same steps and "
                                                       "candidates (repeatable); the oracle always is."),
    update_every: int = typer.Option(100, min=1, help="Decisions per feedback batch, the same for every learner."),
    visits_per_week: float = typer.Option(1.0, min=0.01, help="Average requests per customer and week "
                                          "(sets the simulated period, so how often caps bind)."),
    customers: Optional[int] = typer.Option(None, min=1, help="Draw requests from a random sample of this many "
                                            "customers (default: all of the latest snapshot)."),
    outbound: bool = typer.Option(False, "--outbound", help="Simulate weekly outbound campaigns instead: our plan, "
                                  "greedy, random and the oracle under the same capacities, quotas and budget."),
    weeks: int = typer.Option(8, min=1, help="With --outbound: weekly sends to simulate."),
    campaign: Optional[str] = typer.Option(None, help="With --outbound: a campaign of configs/campaigns.yaml "
                                           "(default: its first)."),
    workdir: Optional[Path] = WorkdirOpt,
):
    """Replay the bank's customers through the real decision path against the offer-response truth;
    write cumulative reward and regret against the oracle (CSV, JSON, plot) under reports/<date>/simulation/.
    With --outbound, send a campaign once a week in closed loop and write each planner's value and regret."""
    from rich.progress import Progress
    from rich.table import Table

    from nextbest.cli.common import StageError, console, run_stage, workdir_paths

    if outbound:
        _outbound(campaign, weeks, seed, workdir)
        return
    shadows = tuple(dict.fromkeys(p.value for p in (compare or []) if p != policy))
    if PolicyName.nextbest.value in shadows:
        run_stage(_fail, StageError("--compare takes baselines only: nextbest runs on the decision path "
                               "(use --policy nextbest)"))

    def go():
        from nextbest.monitoring.replay import simulate_workdir

        with Progress(console=console, transient=True) as bar:
            task = bar.add_task(f"simulate {policy.value} ({steps:,} requests)", total=steps)
            try:
                return simulate_workdir(workdir_paths(workdir), policy.value, steps, seed, k, shadows, update_every,
                                        visits_per_week, customers,
                                        progress=lambda done: bar.update(task, completed=done))
            except RuntimeError as exc:  # the engine could not load (no champion model, ...)
                raise StageError(str(exc)) from None

    result, files = run_stage(go)
    table = Table(title=f"{steps:,} requests, {int(result.has_candidates.sum()):,} with allowed offers, "
                        f"{result.config['days']:.0f} simulated days")
    for col in ("policy", "expected reward", "regret", "realised reward", "acceptance",
                "incremental / 1,000 offers", "incremental value / 1,000 offers", "policy time (s)"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for name, s in result.summary().items():
        per = s["per_1000_offers"]
        table.add_row(name + (" (on the path)" if name == result.driver else ""), f"{s['expected_reward']:,.0f}",
                      f"{s['regret']:,.0f}", f"{s['realised_reward']:,.0f}", f"{s['acceptance_rate']:.2%}",
                      f"{per['incremental']:.1f}", f"{per['incremental_expected_value']:,.0f}", f"{s['seconds']:.1f}")
    console.print(table)
    for kind, path in files.items():
        console.print(f"{kind}: {path}")
    console.print(f"decision log: {result.events_db}")


def _outbound(campaign: Optional[str], weeks: int, seed: int, workdir: Optional[Path]) -> None:
    from rich.table import Table

    from nextbest.cli.common import console, run_stage, workdir_paths

    paths = workdir_paths(workdir)

    def go():
        from nextbest.monitoring.replay.outbound import simulate_outbound

        with console.status("outbound simulation") as status:
            return simulate_outbound(paths, campaign, weeks, seed, progress=lambda m: status.update(m))

    outcome, files = run_stage(go)
    s = outcome.summary
    table = Table(title=f"campaign {s['campaign']}: {weeks} weekly sends from {s['first_day']}, "
                        f"{s['eligible']:,} customers eligible, {s['control']:,} in its control group")
    # Values in EUR: realised (accepted margin - cost), expected (true P x margin - cost), planned (the model's).
    for col in ("planner", "contacts", "accepted", "cost", "realised", "expected", "regret", "planned"):
        table.add_column(col, justify="left" if col == "planner" else "right")
    for name, t in s["planners"].items():
        table.add_row(name, f"{t['contacts']:,}", f"{t['accepted']:,}", f"{t['cost']:,.2f}",
                      f"{t['realised_value']:,.0f}", f"{t['expected_value']:,.0f}", f"{t['regret']:,.0f}",
                      f"{t['planned_value']:,.0f}")
    console.print(table)
    ratios = {k: "n/a" if v is None else f"{v:.3f}" for k, v in s["ratios"].items()}
    console.print(f"expected value: plan / greedy {ratios['plan_over_greedy']}, plan / oracle "
                  f"{ratios['plan_over_oracle']}, greedy / oracle {ratios['greedy_over_oracle']}")
    for kind, path in files.items():
        console.print(f"{kind}: {path}", soft_wrap=True)


def _fail(exc: Exception):
    raise exc
