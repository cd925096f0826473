"""One campaign's plan for one day, end to end: features, models, rules, control group, send hours,
valuation, assignment, exploration, the decisions logged and the contact lists.

`nextbest plan` calls `plan_campaign`, then `write_plan`. Every contact is logged as a decision
(policy `outbound`, `context.plan` = `<campaign>@<date>`) with its candidates, request context and
exact propensity, so `/feedback`, KPIs, uplift and off-policy evaluation read it as any decision.
Customers of the campaign's control group whom the plan would have contacted are logged too, with
no offer (`blocked` = `holdout:<campaign>`, the withheld offer in `context.withheld`): they are the
comparison the campaign's uplift is measured against, and their contacts are not sent.
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import numpy as np
import pandas as pd

from nextbest.config import (CampaignPlan, ConfigError, load_bandit, load_campaigns, load_catalogue, load_rules,
                             load_segments)
from nextbest.config.campaigns import OUTBOUND, WEEKDAYS
from nextbest.constants import CHURN_MODEL_NAME, CUSTOMER_ID, EVENT_TIMESTAMP, NBP_MODEL_NAME
from nextbest.serving.bandit import Featuriser, OnlinePolicy
from nextbest.serving.decide import CONTROL, holdout_unit
from nextbest.serving.eventlog import EventLog
from nextbest.serving.fallback import latest_snapshot
from nextbest.serving.models import LoadedModel
from nextbest.serving.outbound import assign
from nextbest.serving.outbound.audience import (DAY, apply_batch_rules, audience_mask, customer_events,
                                                history_arrays, holdout_masks, number, rule_inputs)
from nextbest.serving.outbound.plan import Served, Valued, explore, options, value_offers
from nextbest.serving.privacy import load_key, pseudonymise
from nextbest.settings import Paths

POLICY = "outbound"
SCORE_CHUNK = 200_000  # customers scored per model call (bounds the scorer's memory)


@dataclass
class Plan:
    """A day's plan and what the report shows about it."""

    campaign: str
    day: date
    contacts: pd.DataFrame      # sent: one row per contact
    withheld: pd.DataFrame      # the control group's would-be contacts (not sent)
    summary: dict
    decisions: list[tuple] = field(default_factory=list, repr=False)
    inputs: "DayInputs | None" = field(default=None, repr=False)

    @property
    def plan_id(self) -> str:
        return f"{self.campaign}@{self.day.isoformat()}"


@dataclass(frozen=True)
class DayInputs:
    """What the plan was solved from, for simulations and diagnostics.

    Attributes:
        customer_ids: (n,) the latest snapshot's customers.
        products, channels: the campaign's, P and C of them.
        valued: the model's P(accept) and net value per (customer, product, channel), -inf where not allowed.
        hours: (n, C) send hour per customer and channel.
        margins: (P,) value if accepted; costs: (C,) per contact.
        reachable: (n,) in the audience and outside the global control group.
        control: (n,) in the campaign's control group.
        unprompted: (n, P) the next-best-product model's P(acquire next month): what the customer
            would do without an offer.
    """

    customer_ids: list[str]
    products: list[str]
    channels: list[str]
    valued: Valued
    hours: np.ndarray
    margins: np.ndarray
    costs: np.ndarray
    reachable: np.ndarray
    control: np.ndarray
    unprompted: np.ndarray | None = None


def _campaign(name: str) -> tuple[CampaignPlan, str, object, object, object]:
    catalogue = load_catalogue()
    segments = load_segments(catalogue=catalogue)
    bandit = load_bandit(catalogue=catalogue)
    rules = load_rules(catalogue=catalogue, bandit=bandit)
    cfg = load_campaigns(catalogue=catalogue, segments=segments, rules=rules, bandit=bandit)
    if name not in cfg.campaigns:
        raise ConfigError(f"unknown campaign {name!r}; campaigns.yaml has {sorted(cfg.campaigns) or 'none'}")
    return cfg.campaigns[name], cfg.salt, catalogue, bandit, rules


def send_hours(paths: Paths, ids: list[str], snapshot: pd.DataFrame, window: list[int], channels: list[str],
               featuriser: Featuriser, weights: np.ndarray, days: int = 180) -> np.ndarray:
    """Each customer's send hour on each channel among the window's, (n, C).

    The hour where the customer is most likely to answer: their own activity density at that hour
    (the times of their activity over the last `days` days in `raw/interactions.parquet`, shrunk
    toward their segment's; `sendtime.slot_scores`) times the channel's odds at that hour as the
    served policy has learned them (its hour-of-day weights on the channel: none before feedback).
    """
    import pyarrow.parquet as pq

    from nextbest.serving.outbound.sendtime import slot_scores

    path = paths.raw / "interactions.parquet"
    if path.exists():
        taken = pd.Timestamp(snapshot[EVENT_TIMESTAMP].max())
        column = pq.read_schema(path).field("event_date").type
        since = pd.Timestamp(taken - pd.Timedelta(days=days))
        since = since.tz_convert(None) if since.tzinfo is not None else since  # the UTC wall clock
        if getattr(column, "tz", None):  # the column's own kind of timestamp: filters compare like with like
            since = since.tz_localize("UTC")
        events = pd.read_parquet(path, columns=[CUSTOMER_ID, "event_date"], filters=[("event_date", ">=", since)],
                                 read_dictionary=[CUSTOMER_ID])
    else:
        events = pd.DataFrame({CUSTOMER_ID: pd.Series([], dtype=str), "event_date": pd.Series([], "datetime64[ns]")})
    segments = snapshot["relationship"].astype(str).to_numpy() if "relationship" in snapshot else None
    density = np.log(np.maximum(slot_scores(events, ids, window, segments), 1e-12))  # (n, S)
    angle = 2 * np.pi * np.asarray(window, dtype=float) / 24
    hours = np.empty((len(ids), len(channels)), dtype=np.int64)
    for j, channel in enumerate(channels):
        c = featuriser.channels.index(channel)
        o = featuriser.offsets
        odds = weights[o["sin"] + c] * np.sin(angle) + weights[o["cos"] + c] * np.cos(angle)  # (S,) log-odds
        hours[:, j] = np.asarray(window)[(density + odds[None, :]).argmax(1)]
    return hours


# What the rules, the audience and the valuation read besides the models' inputs.
_RULE_COLUMNS = {"marketing_opt_out", "age", "logins_app_30d", "logins_web_30d", "lifecycle", "relationship",
                 "product_load", "balance_tier", "value_tier"}
_RULE_PREFIXES = ("consent_", "held_", "months_since_acq_", "views_", "need_")


def _rule_column(name: str) -> bool:
    return name in _RULE_COLUMNS or (name.startswith(_RULE_PREFIXES) and not name.startswith("held_lag"))


def _score(model: LoadedModel, frame: pd.DataFrame) -> np.ndarray:
    parts = [model.scorer.predict_proba(frame.iloc[i:i + SCORE_CHUNK]) for i in range(0, len(frame), SCORE_CHUNK)]
    return np.vstack(parts) if parts else np.zeros((0, len(model.meta.outputs)))


def plan_campaign(paths: Paths, name: str, day: date, progress=None) -> Plan:
    """Plans campaign `name` for `day` (nothing is written or logged: see `write_plan`).

    Raises:
        ConfigError: unknown campaign, or a day outside its send days.
        LookupError: no champion model.
        ValueError: the plan was already made for that day.
    """
    say = progress or (lambda message: None)
    started = time.perf_counter()
    camp, salt, catalogue, bandit, rules = _campaign(name)
    weekday = day.weekday()
    if WEEKDAYS[weekday] not in camp.window.days:
        raise ConfigError(f"campaign {name!r}: {day.isoformat()} is a {WEEKDAYS[weekday]}, outside its send days "
                          f"{camp.window.days}")
    plan_id = f"{name}@{day.isoformat()}"
    logged = paths.events_db.exists()
    eventlog = EventLog(paths.events_db if logged else None)  # no log yet: no history, and no file made
    try:
        already = eventlog.plan_decisions(plan_id)
        if already:
            raise ValueError(f"campaign {name!r} is already planned for {day.isoformat()} ({already} decisions "
                             f"logged); plan another day")
        say("loading models and features")
        nbp, churn = LoadedModel(NBP_MODEL_NAME, paths), LoadedModel(CHURN_MODEL_NAME, paths)
        for model in (nbp, churn):
            changed = model.meta.catalogue_change(catalogue.ids)
            if changed:
                raise ValueError(f"model '{model.registered.name}' v{model.registered.version} was {changed} "
                                 f"(nextbest train {model.registered.name})")
        inputs = (set(nbp.meta.preprocessor.numeric) | set(nbp.meta.preprocessor.categorical)
                  | set(churn.meta.preprocessor.numeric) | set(churn.meta.preprocessor.categorical))
        snapshot = latest_snapshot(paths.features,
                                   lambda c: c in inputs or c in camp.audience.segments or _rule_column(c))
        missing = sorted(inputs - set(snapshot.columns))
        if missing:
            raise ValueError(f"the models read feature columns the built feature tables lack: {missing[:8]}")
        taken_at = pd.Timestamp(snapshot[EVENT_TIMESTAMP].max()).timestamp()
        ids = snapshot[CUSTOMER_ID].astype(str).tolist()
        key = load_key(paths.root)
        pseudonyms = np.array([pseudonymise(c, key) for c in ids], dtype=object)
        now = datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()
        say(f"scoring {len(ids):,} customers")
        scored = _score(nbp, snapshot)
        index = {p: j for j, p in enumerate(nbp.meta.outputs)}
        probs = scored[:, [index[p] for p in catalogue.ids]]
        # Churn risk for everyone only when the audience reads it; else for the planned customers alone.
        bounded = camp.audience.churn_risk.min is not None or camp.audience.churn_risk.max is not None
        risk = _score(churn, snapshot)[:, 0] if bounded else np.full(len(ids), np.nan)
        in_audience, left_out = audience_mask(snapshot, camp.audience, risk)

        say("applying the rules")
        from nextbest.eventlog import EventLogReader

        if logged:
            with EventLogReader(paths.events_db) as reader:
                events = customer_events(reader.customer_events(until=now))
        else:
            events = {}
        channels = list(camp.channels)
        contacts, rejected = eventlog.contact_history(now - 7 * DAY, now, now - rules.rejection_cooldown_days * DAY)
        per_channel, outbound, rej = history_arrays(pseudonyms, catalogue.ids, channels, contacts, rejected, OUTBOUND)
        inputs = rule_inputs(snapshot, catalogue, rules, now, taken_at, events, pseudonyms)
        channel_ok, product_ok, suppressed = apply_batch_rules(inputs, catalogue, rules, channels, per_channel, rej,
                                                               camp.max_contacts_per_week, outbound, in_audience)
        in_global, withheld_products, groups = holdout_masks(bandit, catalogue, ids)
        product_ok &= ~withheld_products
        if (withheld_products.any(1) & in_audience).any():
            suppressed["holdout (bandit.yaml campaigns)"] = int((withheld_products.any(1) & in_audience).sum())
        suppressed["holdout:all"] = int((in_global & in_audience).sum())
        control = np.array([holdout_unit(salt, name, c) < camp.holdout_share for c in ids], dtype=bool)
        reachable = in_audience & ~in_global
        cols = [catalogue.ids.index(p) for p in camp.products]
        allowed = (product_ok[:, cols][:, :, None] & channel_ok[:, None, :] & reachable[:, None, None])

        featuriser = Featuriser.for_catalogue(catalogue, bandit.actions)
        policy = OnlinePolicy(featuriser, bandit, eventlog, viewed_weight=math.log(bandit.cold_start.page_boost))
        say("learning send hours")
        hours = send_hours(paths, ids, snapshot, camp.window.hours, channels, featuriser, policy.posterior.mean)
        levers = bandit.levers
        by_id = catalogue.by_id()
        margins = np.array([by_id[p].margin * levers.products.get(p, 1.0) * levers.categories.get(by_id[p].category,
                                                                                                   1.0)
                            for p in camp.products])
        # The rule inputs of `profile_fields`: recent page views and log1p(logins in 30 days).
        viewed = np.column_stack([number(snapshot, f"views_{p}_30d", 0.0) > 0 for p in camp.products])
        logins = [np.nan_to_num(number(snapshot, c, 0.0)) for c in ("logins_app_30d", "logins_web_30d")]
        engagement = np.log1p(logins[0] + logins[1])
        costs = np.array([camp.channels[c].cost for c in channels])
        say("valuing offers")
        valued = value_offers(featuriser, policy.posterior.mean, list(camp.products), margins, probs[:, cols], viewed,
                              engagement, channels, costs, hours, weekday, allowed,
                              uplift=bandit.arbitration == "uplift")
        quota_products = [camp.products.index(p) for p in camp.quotas]
        capacity = np.array([camp.channels[c].capacity for c in channels], dtype=float)
        quotas = np.array([camp.quotas[p] for p in camp.quotas], dtype=float)
        budget = np.inf if camp.budget is None else float(camp.budget)
        opts = options(valued, capacity, costs, quota_products, quotas, budget)
        say("assigning contacts")
        # The control group is left out of the assignment, so the capacity goes to customers who are
        # sent; its would-be contacts are what the plan's prices would have given each of them.
        treated = dataclasses.replace(opts.problem, value=np.where(control[:, None], -np.inf, opts.problem.value))
        solution = assign.solve(treated)
        greedy_value = assign.plan_value(treated, assign.greedy(treated))
        chosen = solution.choice.copy()
        held = np.flatnonzero(control)
        chosen[held] = assign.at_prices(opts.problem, solution.prices, held)
        rows = np.flatnonzero(chosen >= 0)
        planned = np.full(len(ids), assign.NONE)
        planned[rows] = opts.product[rows, chosen[rows]]
        channel_of = np.where(chosen >= 0, opts.problem.channel[np.maximum(chosen, 0)], assign.NONE)
        if not bounded and len(rows):
            risk[rows] = _score(churn, snapshot.iloc[rows])[:, 0]
        key_explore = f"{name}@{day.isoformat()}"
        sent = planned.copy()
        sent[control] = assign.NONE
        served = explore(salt, key_explore, ids, sent, channel_of, valued, camp.explore_share, quota_products)
        versions = {NBP_MODEL_NAME: nbp.registered.version, CHURN_MODEL_NAME: churn.registered.version}
        contacts_frame, withheld_frame, decisions = _decisions(
            plan_id, name, day, ids, pseudonyms, snapshot, channels, camp.products, planned, control, channel_of,
            served, valued, probs[:, cols], viewed, margins, hours, weekday, engagement, risk, groups, versions,
            policy.name)
        summary = _summary(camp, channels, solution, greedy_value, planned, control, channel_of, served,
                           valued, suppressed, left_out, in_audience, in_global, len(ids), started)
    finally:
        eventlog.close()
    inputs = DayInputs(ids, list(camp.products), channels, valued, hours, margins, costs, reachable, control,
                       probs[:, cols])
    return Plan(name, day, contacts_frame, withheld_frame, summary, decisions, inputs)


def _decisions(plan_id, name, day, ids, pseudonyms, snapshot, channels, products, planned, control, channel_of,
               served: Served, valued: Valued, base_prob, viewed, margins, hours, weekday, engagement, risk, groups,
               versions, policy_name):
    """The contacts and control-group entries as decision-log rows, and the contact lists."""
    segment = snapshot["relationship"].astype(str).to_numpy() if "relationship" in snapshot else np.full(len(ids), "")
    lifecycle = snapshot["lifecycle"].astype(str).to_numpy() if "lifecycle" in snapshot else np.full(len(ids), "")
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()
    rows, sent, held = [], [], []
    for i in np.flatnonzero(planned >= 0):
        j = int(channel_of[i])
        channel = channels[j]
        hour = int(hours[i, j])
        at = start + hour * 3600
        is_control = bool(control[i])
        p = int(planned[i]) if is_control else int(served.product[i])
        allowed = np.flatnonzero(np.isfinite(valued.value[i, :, j]))
        cands = [{"arm": products[q], "base_prob": round(float(base_prob[i, q]), 8),
                  "value": round(float(margins[q]), 6), "viewed": bool(viewed[i, q])} for q in allowed]
        g = {**groups[i], name: CONTROL if is_control else "treatment"}
        request = {"channel": channel, "hour": hour, "weekday": weekday,
                   "engagement": round(float(min(max(engagement[i], 0.0), 1e9)), 6), "page": None, "event": None,
                   "at": at}
        decision_id = uuid.uuid4().hex
        probability = float(valued.probability[i, p, j])
        expected = float(valued.value[i, p, j])
        context = {"policy": POLICY, "plan": plan_id, "campaign": name, "exploring": bool(served.explored[i]),
                   "degraded": None, "segment": segment[i], "lifecycle": lifecycle[i], "known": True,
                   "churn_risk": round(float(risk[i]), 6), "blocked": f"holdout:{name}" if is_control else None,
                   "trigger": None, "groups": g, "holdout": False, "request": request, "candidates": cands,
                   "suppressed": []}
        if is_control:
            context["withheld"] = {"product_id": products[p], "channel": channel, "at": at}
            rows.append((decision_id, at, pseudonyms[i], channel, 0, [], versions, context))
            held.append((ids[i], name, channel, products[p], at, segment[i], lifecycle[i], probability, expected))
            continue
        offer = {"product_id": products[p], "rank": 1, "score": round(expected, 6),
                 "probability": round(probability, 6), "propensity": round(max(float(served.propensity[i]), 1e-6), 6),
                 "explored": bool(served.explored[i])}
        rows.append((decision_id, at, pseudonyms[i], channel, 1, [offer], versions, context))
        sent.append((ids[i], name, channel, products[p], at, decision_id, probability, expected,
                     bool(served.explored[i]), float(served.propensity[i]), segment[i], lifecycle[i]))
    cols = ["customer_id", "campaign", "channel", "product_id", "send_at", "decision_id", "probability",
            "expected_value", "explored", "propensity", "segment", "lifecycle"]
    contacts = pd.DataFrame(sent, columns=cols)
    withheld = pd.DataFrame(held, columns=["customer_id", "campaign", "channel", "product_id", "send_at", "segment",
                                           "lifecycle", "probability", "expected_value"])
    for frame in (contacts, withheld):
        frame["send_at"] = pd.to_datetime(frame["send_at"], unit="s", utc=True)
    return contacts, withheld, rows


def _summary(camp, channels, solution, greedy_value, planned, control, channel_of, served, valued,
             suppressed, left_out, in_audience, in_global, n, started) -> dict:
    contacted = (planned >= 0) & ~control
    used = {c: int(((channel_of == j) & contacted).sum()) for j, c in enumerate(channels)}
    withheld = {c: int(((channel_of == j) & control & (planned >= 0)).sum()) for j, c in enumerate(channels)}
    eligible = {c: int(np.isfinite(valued.value[:, :, j]).any(1).sum()) for j, c in enumerate(channels)}
    cost = float(sum(used[c] * camp.channels[c].cost for c in channels))
    unfilled = [c for c in channels if used[c] < camp.channels[c].capacity]
    return {
        "customers": n, "audience": int(in_audience.sum()), "audience_left_out": left_out,
        "global_control": int(in_global.sum()), "suppressed": suppressed,
        "contacts": int(contacted.sum()), "control_withheld": int(((planned >= 0) & control).sum()),
        "explored": int(served.explored[contacted].sum()),
        "channels": {c: {"capacity": camp.channels[c].capacity, "contacts": used[c], "withheld": withheld[c],
                         "eligible_customers": eligible[c], "cost_per_contact": camp.channels[c].cost}
                     for c in channels},
        "unfilled_channels": unfilled,
        # Sent contacts offering the product (exploration may offer a quota'd product only where planned).
        "quotas": {p: {"quota": q, "contacts": int((contacted & (served.product == camp.products.index(p))).sum())}
                   for p, q in camp.quotas.items()},
        "budget": camp.budget, "cost": round(cost, 2),
        "value": {"plan": solution.value, "lp_bound": solution.bound, "greedy": greedy_value,
                  "plan_over_bound": solution.value / solution.bound if solution.bound > 0 else 1.0,
                  "greedy_over_bound": greedy_value / solution.bound if solution.bound > 0 else 1.0},
        "binding": [c for j, c in enumerate(channels) if solution.prices[j] > 1e-9],
        "marginal_customers": solution.marginal, "seconds": round(time.perf_counter() - started, 2),
    }
