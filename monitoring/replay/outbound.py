"""Outbound campaigns in closed loop: one campaign sent once a week against the simulator's truth,
four planners side by side under the same capacities, quotas, budget and contact caps.

`nextbest simulate --outbound` runs this. The first send day after the truth's snapshot is planned
once through the real path (`nextbest.serving.outbound.plan_campaign`: models, rules, consent,
audience, control group, learned send hours, valuation; nothing is logged), and every later week
is sent on the same weekday. The planners:

- plan: the assignment `nextbest plan` makes (`assign.solve`) on the model's values;
- greedy: `assign.greedy` on the same values;
- random: random allowed (customer, product, channel) picks until a limit is reached;
- oracle: `assign.solve` on the true values, true P(accept) at the truth's best send hour among the
  window's x margin - contact cost, its own fatigue included (the best targeting by propensity);
- uplift: `assign.solve` on the models' uplift, max(P(accept) - P(acquire unprompted), 0) x margin -
  contact cost, P(accept) the served policy's and P(acquire unprompted) the next-best-product
  model's (learned from what customers acquire without offers);
- uplift_oracle: `assign.solve` on the true uplift, max(P(accept) - P(acquire unprompted), 0) x margin -
  contact cost (`Truth.uplift_grid`: the best targeting by incremental effect).

Every contact is also counted by what it adds: an accepted offer is incremental only when the
customer would not have acquired the product unprompted that month (the same uniform decides both:
accepted iff U < P(accept), unprompted iff U < p0, incremental iff p0 <= U < P(accept)). Incremental
conversions and incremental value (incremental margin - contact cost, realised and expected) are
reported per week and per 1,000 contacts.

The model's values do not learn in this loop: every week the three model-based planners see the
values of the first day, less what their own state forbids. Each planner has its own world:
a product its customer accepted is held from then on and never offered again by that planner,
the per-channel caps of rules.yaml and the campaign's `max_contacts_per_week` count that planner's
contacts of the 7 days before the send (so last week's), and every contact of the last
FATIGUE_WEEKS weeks lowers that customer's true acceptance. The rules' verdict of the first day
(consent, opt-out, eligibility, audience, holdings, cool-downs) holds for the whole run, and the
campaign's control group is contacted by no planner (it is left out of the assignment, so its
capacity goes to the treated customers; `nextbest plan` instead withholds its would-be contacts).
Customers the truth does not know (no row in truth/acquisition.parquet) are left out too.

Answers use common random numbers: one uniform per week x customer x product x channel, the same
for every planner, so two planners that send the same offer to the same customer on the same
channel in the same week get the same answer when their true probabilities agree. Value is
realised (accepted margin - contact cost) and expected (true P x margin - cost); a week's regret is
the oracle's expected value minus the planner's (the oracle lives in its own world too, so a week's
regret is not at least zero by construction; the totals compare the planners). Beside them, the
planned value is what the planner expected of its contacts by the model's values: the gap between
the two is the model's error, which can make a plan that is better by the model's values worse in
truth than greedy's. After every week,
each planner's contacts are checked against every limit and rule above; a breach raises, it is never
clipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from nextbest.constants import DEFAULT_SEED
from nextbest.serving.outbound.assign import NONE, feasible, greedy, solve
from nextbest.serving.outbound.plan import Valued, options

PLANNERS = ("plan", "greedy", "random", "oracle", "uplift", "uplift_oracle")
# A contact in the last FATIGUE_WEEKS weeks lowers the customer's true acceptance logit by
# FATIGUE_LOGIT (odds x 0.61 each). The bank simulator has no contact fatigue of its own; this is an
# assumption of the loop, strong enough that writing to the same customers every week stops paying
# within a month, as campaign managers observe, and weak enough that one contact a month costs little.
FATIGUE_LOGIT = 0.5
FATIGUE_WEEKS = 4
_TOL = 1e-6


@dataclass(frozen=True)
class Limits:
    """What a week's contacts may use.

    Attributes:
        capacity, costs: (C,) contacts per send day and cost per contact of each channel.
        quota_products, quotas: the quota'd products (indices) and their contacts per send day.
        budget: total contact cost per send day (inf: none).
        channel_caps: (C,) contacts per customer and channel in 7 days (rules.yaml; inf: none).
        weekly_cap: outbound contacts per customer in 7 days, all channels (inf: none).
    """

    capacity: np.ndarray
    costs: np.ndarray
    quota_products: list[int]
    quotas: np.ndarray
    budget: float
    channel_caps: np.ndarray
    weekly_cap: float


@dataclass(frozen=True)
class World:
    """What every planner starts from: the first day's plan inputs beside the truth.

    Attributes:
        model: the model's P(accept) and net value, (n, P, C), as planned on the first day.
        model_unprompted: (n, P) the next-best-product model's P(acquire next month) (None: zero).
        allowed: (n, P, C) the rules allow it, the truth knows the customer, not in the control group.
        control: (n,) the campaign's control group.
        margins: (P,) value if accepted.
        learned_hour: (n, C) the send hour the model-based planners use.
        true_learned: (n, P, C) true P(accept) at the learned hour, no fatigue.
        true_best, best_hour: (n, P, C) true P(accept) at the truth's best hour of the window, and that hour.
        unprompted: (n, P) true P(acquire this month without an offer) (0 for customers the truth lacks).
        first_day: the first send day; week w is sent 7 w days later, on the same weekday.
    """

    campaign: str
    customer_ids: list[str]
    products: list[str]
    channels: list[str]
    model: Valued
    allowed: np.ndarray
    control: np.ndarray
    margins: np.ndarray
    learned_hour: np.ndarray
    true_learned: np.ndarray
    true_best: np.ndarray
    best_hour: np.ndarray
    limits: Limits
    first_day: date
    unknown_to_truth: int = 0
    unprompted: np.ndarray | None = None
    model_unprompted: np.ndarray | None = None

    def p0(self) -> np.ndarray:
        return np.zeros(self.allowed.shape[:2]) if self.unprompted is None else self.unprompted


@dataclass
class State:
    """One planner's own world: what its customers acquired, and its contacts week by week."""

    acquired: np.ndarray                                   # (n, P) bool
    channel: list[np.ndarray] = field(default_factory=list)  # per week, (n,) channel index or NONE

    def recent(self, weeks: int = FATIGUE_WEEKS) -> np.ndarray:
        """(n,) contacts in the last `weeks` weeks."""
        past = self.channel[-weeks:]
        return sum((c >= 0).astype(int) for c in past) if past else np.zeros(len(self.acquired), dtype=int)


@dataclass
class Outcome:
    """A whole run: one row per week and planner, every contact, the totals."""

    rows: list[dict]
    contacts: list[dict]
    summary: dict


def fatigued(p: np.ndarray, recent: np.ndarray) -> np.ndarray:
    """P(accept) with FATIGUE_LOGIT off the logit per recent contact; p (n, ...), recent (n,)."""
    p = np.clip(p, 1e-9, 1 - 1e-9)
    z = np.log(p) - np.log1p(-p) - FATIGUE_LOGIT * recent.reshape(-1, *([1] * (p.ndim - 1)))
    return 1.0 / (1.0 + np.exp(-z))


def build_world(campaign: str, inputs, truth, window_hours: list[int], limits: Limits, first_day: date) -> World:
    """The world from the first day's `DayInputs` and the `Truth` (pure: arrays in, arrays out)."""
    n, (p, c) = len(inputs.customer_ids), (len(inputs.products), len(inputs.channels))
    rows = np.array([truth.index.get(cid, -1) for cid in inputs.customer_ids])
    known = rows >= 0
    weekday = first_day.weekday()
    true_learned, true_best = np.zeros((n, p, c)), np.zeros((n, p, c))
    best_hour = np.zeros((n, p, c), dtype=int)
    slots = np.asarray(window_hours, dtype=float)
    for j, channel in enumerate(inputs.channels):
        true_learned[known, :, j] = truth.acceptance_grid(rows[known], inputs.products, channel,
                                                          inputs.hours[known, j], weekday)
        grid = truth.acceptance_grid(rows[known], inputs.products, channel,
                                     np.tile(slots, (int(known.sum()), 1)), weekday)  # (m, P, S)
        true_best[known, :, j] = grid.max(2)
        best_hour[known, :, j] = slots[grid.argmax(2)].astype(int)
    allowed = np.isfinite(inputs.valued.value) & known[:, None, None] & ~inputs.control[:, None, None]
    unprompted = np.zeros((n, p))
    unprompted[known] = truth.unprompted(rows[known], inputs.products)
    return World(campaign, list(inputs.customer_ids), list(inputs.products), list(inputs.channels), inputs.valued,
                 allowed, inputs.control.copy(), np.asarray(inputs.margins, dtype=float),
                 np.asarray(inputs.hours, dtype=int), true_learned, true_best, best_hour, limits, first_day,
                 int((~known).sum()), unprompted, inputs.unprompted)


def available(world: World, state: State) -> np.ndarray:
    """(n, P, C) what a planner may send this week: the first day's rules, less its customers'
    acquisitions and the channels its contacts of the last 7 days cap."""
    ok = world.allowed & ~state.acquired[:, :, None]
    if state.channel:
        last = state.channel[-1]
        n, c = len(last), len(world.channels)
        per_channel = np.zeros((n, c))
        sent = last >= 0
        per_channel[np.flatnonzero(sent), last[sent]] = 1
        ok &= (per_channel < world.limits.channel_caps[None, :])[:, None, :]
        ok &= (sent.astype(float) < world.limits.weekly_cap)[:, None, None]
    return ok


def choose(planner: str, world: World, ok: np.ndarray, recent: np.ndarray,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One planner's week: (n,) product and channel index per customer (NONE: no contact)."""
    lim = world.limits
    if planner in ("oracle", "uplift_oracle"):
        prob = fatigued(world.true_best, recent)
        if planner == "uplift_oracle":
            prob = np.maximum(prob - world.p0()[:, :, None], 0.0)
        value = np.where(ok, prob * world.margins[None, :, None] - lim.costs[None, None, :], -np.inf)
    elif planner == "random":
        # Scores drawn at random: options() then keeps a random allowed product per channel and
        # greedy() takes the cells in random order while every limit has room.
        prob, value = world.model.probability, np.where(ok, 1.0 + rng.random(ok.shape), -np.inf)
    elif planner in ("plan", "greedy"):
        prob, value = world.model.probability, np.where(ok, world.model.value, -np.inf)
    elif planner == "uplift":
        base = np.zeros(ok.shape[:2]) if world.model_unprompted is None else world.model_unprompted
        prob = np.maximum(world.model.probability - base[:, :, None], 0.0)
        value = np.where(ok, prob * world.margins[None, :, None] - lim.costs[None, None, :], -np.inf)
    else:
        raise ValueError(f"unknown planner {planner!r}; one of {', '.join(PLANNERS)}")
    opts = options(Valued(prob, value), lim.capacity, lim.costs, lim.quota_products, lim.quotas, lim.budget)
    choice = greedy(opts.problem) if planner in ("greedy", "random") else solve(opts.problem).choice
    if not feasible(opts.problem, choice):
        raise RuntimeError(f"planner {planner}: the assignment breaks a capacity, quota or the budget")
    rows = np.flatnonzero(choice >= 0)
    product, channel = np.full(len(choice), NONE), np.full(len(choice), NONE)
    product[rows] = opts.product[rows, choice[rows]]
    channel[rows] = opts.problem.channel[choice[rows]]
    return product, channel


def check(world: World, state: State, ok: np.ndarray, product: np.ndarray, channel: np.ndarray,
          planner: str, week: int) -> None:
    """Raises RuntimeError if a week's contacts break a limit or a rule (`ok`: what was available)."""
    lim, rows = world.limits, np.flatnonzero(product >= 0)
    where = f"outbound simulation, week {week}, planner {planner}"
    if (channel[rows] < 0).any() or (channel[product < 0] >= 0).any():
        raise RuntimeError(f"{where}: a contact without a product or a channel")
    used = np.bincount(channel[rows], minlength=len(world.channels))
    if (used > lim.capacity + _TOL).any():
        raise RuntimeError(f"{where}: channel capacity exceeded ({used.tolist()} > {lim.capacity.tolist()})")
    for q, pi in enumerate(lim.quota_products):
        if (product == pi).sum() > lim.quotas[q] + _TOL:
            raise RuntimeError(f"{where}: quota of {world.products[pi]} exceeded")
    if float(lim.costs[channel[rows]].sum()) > lim.budget + _TOL:
        raise RuntimeError(f"{where}: budget exceeded")
    if world.control[rows].any():
        raise RuntimeError(f"{where}: a control-group customer was contacted")
    if state.acquired[rows, product[rows]].any():
        raise RuntimeError(f"{where}: a product was offered again to a customer who acquired it")
    if not ok[rows, product[rows], channel[rows]].all() or not world.allowed[rows, product[rows], channel[rows]].all():
        raise RuntimeError(f"{where}: a contact the rules or the caps do not allow")
    if state.channel:
        last = state.channel[-1]
        for j in range(len(world.channels)):
            both = (last == j).astype(int) + (channel == j).astype(int)
            if (both > lim.channel_caps[j]).any():
                raise RuntimeError(f"{where}: the 7-day cap of {world.channels[j]} exceeded")
        if ((last >= 0).astype(int) + (channel >= 0).astype(int) > lim.weekly_cap).any():
            raise RuntimeError(f"{where}: the campaign's max_contacts_per_week exceeded")


def run(world: World, weeks: int, seed: int, progress=None) -> Outcome:
    """The closed loop: `weeks` weekly sends for every planner, each in its own world (pure given the seed)."""
    if weeks < 1:
        raise ValueError("weeks must be at least 1")
    n, p, c = world.allowed.shape
    states = {name: State(np.zeros((n, p), dtype=bool)) for name in PLANNERS}
    rows, contacts, lim = [], [], world.limits
    for week in range(weeks):
        day = world.first_day + timedelta(days=7 * week)
        draws = np.random.default_rng([seed, week, 0]).random((n, p, c))  # common random numbers
        week_rows = {}
        for k, name in enumerate(PLANNERS):
            state = states[name]
            ok, recent = available(world, state), state.recent()
            product, channel = choose(name, world, ok, recent, np.random.default_rng([seed, week, 1, k]))
            check(world, state, ok, product, channel, name, week)
            i = np.flatnonzero(product >= 0)
            pi, ci = product[i], channel[i]
            oracle = name in ("oracle", "uplift_oracle")
            p_true = fatigued((world.true_best if oracle else world.true_learned)[i, pi, ci], recent[i])
            hour = world.best_hour[i, pi, ci] if oracle else world.learned_hour[i, ci]
            accepted = draws[i, pi, ci] < p_true
            p0 = world.p0()[i, pi]
            incremental = accepted & (draws[i, pi, ci] >= p0)
            lift = np.maximum(p_true - p0, 0.0)
            cost = lim.costs[ci]
            # What the planner expected of its contacts: the model's values (the oracles' are the truth's).
            if oracle:
                believed = (lift if name == "uplift_oracle" else p_true) * world.margins[pi] - cost
            elif name == "uplift":
                base = 0.0 if world.model_unprompted is None else world.model_unprompted[i, pi]
                believed = np.maximum(world.model.probability[i, pi, ci] - base, 0.0) * world.margins[pi] - cost
            else:
                believed = world.model.value[i, pi, ci]
            state.acquired[i[accepted], pi[accepted]] = True
            state.channel.append(channel)
            used = np.bincount(ci, minlength=c)
            week_rows[name] = {"week": week + 1, "day": day.isoformat(), "planner": name, "contacts": int(len(i)),
                               "accepted": int(accepted.sum()), "cost": round(float(cost.sum()), 4),
                               "realised_value": round(float((world.margins[pi] * accepted).sum() - cost.sum()), 4),
                               "expected_value": round(float((p_true * world.margins[pi] - cost).sum()), 4),
                               "planned_value": round(float(believed.sum()), 4),
                               "incremental": int(incremental.sum()),
                               "incremental_value": round(float((world.margins[pi] * incremental).sum() - cost.sum()),
                                                          4),
                               "expected_incremental_value": round(float((lift * world.margins[pi] - cost).sum()), 4),
                               **{f"{ch}_contacts": int(used[j]) for j, ch in enumerate(world.channels)}}
            contacts += [{"week": week + 1, "planner": name, "customer_id": world.customer_ids[a],
                          "product_id": world.products[b], "channel": world.channels[d], "hour": int(h),
                          "p_true": float(q), "p_unprompted": float(u), "accepted": bool(y), "incremental": bool(z)}
                         for a, b, d, h, q, u, y, z in zip(i, pi, ci, hour, p_true, p0, accepted, incremental)]
        best = week_rows["oracle"]["expected_value"]
        for name in PLANNERS:
            week_rows[name]["regret"] = round(best - week_rows[name]["expected_value"], 4)
            rows.append(week_rows[name])
        if progress is not None:
            progress(week + 1)
    return Outcome(rows, contacts, summarise(world, rows, weeks, seed))


def summarise(world: World, rows: list[dict], weeks: int, seed: int) -> dict:
    """Totals per planner and the ratios of expected value (plan/greedy, each planner/oracle)."""
    keys = ("contacts", "accepted", "cost", "realised_value", "expected_value", "planned_value", "regret",
            "incremental", "incremental_value", "expected_incremental_value")
    totals = {name: {k: round(sum(r[k] for r in rows if r["planner"] == name), 4) for k in keys} for name in PLANNERS}
    for t in totals.values():  # per 1,000 contacts
        per = 1000 / t["contacts"] if t["contacts"] else 0.0
        t["per_1000_contacts"] = {"incremental": round(t["incremental"] * per, 3),
                                  "incremental_value": round(t["incremental_value"] * per, 3),
                                  "expected_incremental_value": round(t["expected_incremental_value"] * per, 3)}

    def ratio(a: str, b: str) -> float | None:
        den = totals[b]["expected_value"]
        return round(totals[a]["expected_value"] / den, 4) if den > 0 else None

    def incremental_ratio(a: str, b: str) -> float | None:
        den = totals[b]["expected_incremental_value"]
        return round(totals[a]["expected_incremental_value"] / den, 4) if den > 0 else None

    lim = world.limits
    return {
        "campaign": world.campaign, "weeks": weeks, "seed": seed, "first_day": world.first_day.isoformat(),
        "customers": len(world.customer_ids), "unknown_to_truth": world.unknown_to_truth,
        "control": int(world.control.sum()), "eligible": int(world.allowed.any((1, 2)).sum()),
        "fatigue": {"logit_per_contact": FATIGUE_LOGIT, "weeks": FATIGUE_WEEKS},
        "limits": {"capacity": dict(zip(world.channels, lim.capacity.tolist())),
                   "cost_per_contact": dict(zip(world.channels, lim.costs.tolist())),
                   "quotas": {world.products[pi]: float(q) for pi, q in zip(lim.quota_products, lim.quotas)},
                   "budget": None if not np.isfinite(lim.budget) else lim.budget,
                   "channel_caps_per_week": {ch: (None if not np.isfinite(v) else int(v))
                                             for ch, v in zip(world.channels, lim.channel_caps)},
                   "max_contacts_per_week": None if not np.isfinite(lim.weekly_cap) else int(lim.weekly_cap)},
        "planners": totals,
        "ratios": {"plan_over_greedy": ratio("plan", "greedy"), "plan_over_oracle": ratio("plan", "oracle"),
                   "greedy_over_oracle": ratio("greedy", "oracle"), "random_over_oracle": ratio("random", "oracle"),
                   "uplift_oracle_over_oracle_incremental": incremental_ratio("uplift_oracle", "oracle"),
                   "plan_over_uplift_oracle_incremental": incremental_ratio("plan", "uplift_oracle"),
                   "uplift_over_plan_incremental": incremental_ratio("uplift", "plan"),
                   "uplift_over_uplift_oracle_incremental": incremental_ratio("uplift", "uplift_oracle")},
    }


# -- the work dir ----------------------------------------------------------------------------------

def first_send_day(after: date, days: list[str]) -> date:
    """The first day after `after` whose weekday is one of the window's (`mon`..`sun`)."""
    from nextbest.config.campaigns import WEEKDAYS

    day = after + timedelta(days=1)
    while WEEKDAYS[day.weekday()] not in days:
        day += timedelta(days=1)
    return day


def prepare(paths, campaign: str | None = None, progress=None) -> World:
    """The world of a work dir with a simulated bank: its truth, and the campaign planned on its first
    send day after the truth's snapshot (`campaign` default: the first of campaigns.yaml).

    Raises:
        FileNotFoundError: the work dir has no truth/ (not a simulated bank).
        ConfigError: no or an unknown campaign.
    """
    from nextbest.config import ConfigError, load_bandit, load_campaigns, load_catalogue, load_rules, load_segments
    from nextbest.monitoring.replay.world import Truth
    from nextbest.serving.outbound import plan_campaign

    if not (paths.truth / "acquisition.parquet").exists():
        raise FileNotFoundError(f"outbound simulation needs a simulated bank's truth/ ({paths.truth} has no "
                                "acquisition.parquet; `nextbest generate` or `quickstart` makes one)")
    catalogue = load_catalogue()
    bandit = load_bandit(catalogue=catalogue)
    rules = load_rules(catalogue=catalogue, bandit=bandit)
    cfg = load_campaigns(catalogue=catalogue, segments=load_segments(catalogue=catalogue), rules=rules)
    if not cfg.campaigns:
        raise ConfigError("campaigns.yaml has no campaign to simulate")
    campaign = campaign or next(iter(cfg.campaigns))
    if campaign not in cfg.campaigns:
        raise ConfigError(f"unknown campaign {campaign!r}; campaigns.yaml has {sorted(cfg.campaigns)}")
    camp = cfg.campaigns[campaign]
    truth = Truth.load(paths.truth, catalogue.ids, {}, catalogue.categories())
    day = first_send_day(truth.snapshot.date(), camp.window.days)
    inputs = plan_campaign(paths, campaign, day, progress=progress).inputs
    caps = rules.frequency_caps_per_week
    limits = Limits(
        capacity=np.array([camp.channels[ch].capacity for ch in inputs.channels], dtype=float),
        costs=np.asarray(inputs.costs, dtype=float),
        quota_products=[inputs.products.index(q) for q in camp.quotas],
        quotas=np.array([camp.quotas[q] for q in camp.quotas], dtype=float),
        budget=np.inf if camp.budget is None else float(camp.budget),
        channel_caps=np.array([caps.get(ch, np.inf) for ch in inputs.channels], dtype=float),
        weekly_cap=np.inf if camp.max_contacts_per_week is None else float(camp.max_contacts_per_week))
    return build_world(campaign, inputs, truth, camp.window.hours, limits, day)


def write_outcome(outcome: Outcome, out_dir: Path, name: str) -> dict[str, Path]:
    """`<name>.csv` (one row per week and planner), `<name>.contacts.parquet` and `<name>.json` (summary)."""
    import pandas as pd

    from nextbest.io import atomic_write, atomic_write_parquet, write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    weekly = pd.DataFrame(outcome.rows)
    contacts = pd.DataFrame(outcome.contacts, columns=["week", "planner", "customer_id", "product_id", "channel",
                                                       "hour", "p_true", "p_unprompted", "accepted", "incremental"])
    files = {"csv": atomic_write(out_dir / f"{name}.csv", lambda t: weekly.to_csv(t, index=False)),
             "contacts": atomic_write_parquet(contacts, out_dir / f"{name}.contacts.parquet"),
             "json": out_dir / f"{name}.json"}
    write_json(files["json"], {**outcome.summary, "files": {k: str(v) for k, v in files.items() if k != "json"}})
    return files


def simulate_outbound(paths, campaign: str | None = None, weeks: int = 8, seed: int = DEFAULT_SEED,
                      out_dir: Path | None = None, progress=None) -> tuple[Outcome, dict[str, Path]]:
    """A whole outbound simulation on a work dir, its files under `reports/<UTC date>/simulation/`.

    `progress(message)` hears the first day's planning steps and each finished week.
    """
    say = progress or (lambda message: None)
    world = prepare(paths, campaign, progress=say)
    outcome = run(world, weeks, seed, progress=lambda w: say(f"week {w} of {weeks}"))
    out_dir = out_dir or paths.reports / time.strftime("%Y-%m-%d", time.gmtime()) / "simulation"
    return outcome, write_outcome(outcome, out_dir, f"outbound-{world.campaign}-seed{seed}-{weeks}w")
