"""The console's figures from the event log, read through `nextbest.eventlog.EventLogReader`'s bounded
reads: a page of decisions along an index (the next page starts after the last decision shown, so a
deep page costs what the first does), sums over a window of the indexed logging time (`created_at`),
or one customer's or decision's rows by their index. Never the whole log.

Times are epoch seconds (UTC) of `created_at`, the time a decision was logged (for a plan's
contacts, their send time). Value follows the business KPIs (`nextbest.monitoring.kpi`): a taken
offer (accept or convert) is worth the largest value its feedback gave, else the product's margin.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from nextbest.eventlog import WEEK, EventLogError, EventLogReader

PAGE_SIZE = 50
FLAGS = {  # conditions a search offers (names of nextbest.eventlog.DECISION_CONDITIONS), and their labels
    "exploring": "exploring", "degraded": "degraded answer", "suppressed": "with rule suppressions",
    "holdout": "in the control group", "empty": "no offer"}


def connect(events_db: Path) -> EventLogReader | None:
    """A read-only reader of the log, or None when there is no log (or the file is not one)."""
    try:
        return EventLogReader(events_db)
    except (FileNotFoundError, EventLogError):
        return None


@dataclass
class Totals:
    """Decisions of a period and what their offers earned."""

    decisions: int = 0
    offers: int = 0
    accepted: int = 0
    value: float = 0.0
    exploring: int = 0
    degraded: int = 0

    @property
    def acceptance(self) -> float | None:
        return None if not self.offers else self.accepted / self.offers


def _taken(log: EventLogReader, since: float, until: float, margins: dict[str, float],
           weeks: bool = False) -> dict[int, list]:
    """{bin: [offers taken, their value (EUR)]} of the decisions logged in [since, until)."""
    out: dict[int, list] = {}
    for w, product, explicit in log.taken_by_week(since, until, until if weeks else None):
        cell = out.setdefault(int(w), [0, 0.0])
        cell[0] += 1
        cell[1] += float(explicit) if explicit is not None else margins.get(product, 0.0)
    return out


def _flags(log: EventLogReader, since: float, until: float) -> tuple[int, int]:
    counts = log.condition_counts(since, until, ("exploring", "degraded"))
    return counts["exploring"], counts["degraded"]


def totals(log: EventLogReader, since: float, until: float, margins: dict[str, float]) -> Totals:
    """Decisions logged in [since, until): counts, offers shown, offers taken and their value (EUR)."""
    n, offers = log.shown_by_week(since, until).get(0, (0, 0))
    taken, value = _taken(log, since, until, margins).get(0, [0, 0.0])
    return Totals(n, offers, taken, value, *_flags(log, since, until))


def weekly(log: EventLogReader, since: float, until: float, margins: dict[str, float]) -> list[dict]:
    """Per 7 days counted back from `until` to `since`, oldest first: {start, decisions, offers, accepted, value}."""
    return _weeks(log.shown_by_week(since, until, until), _taken(log, since, until, margins, True), since, until)


def _weeks(shown: dict, taken: dict, since: float, until: float) -> list[dict]:
    n_weeks = max(1, math.ceil((until - since) / WEEK))
    out = []
    for w in reversed(range(n_weeks)):
        n, offers = shown.get(w, (0, 0))
        t = taken.get(w, [0, 0.0])
        out.append({"start": max(since, until - (w + 1) * WEEK), "decisions": int(n), "offers": int(offers),
                    "accepted": int(t[0]), "value": float(t[1])})
    return out


def period_and_weeks(events_db: Path, since: float, until: float, weeks_since: float,
                     margins: dict[str, float]) -> tuple[Totals, list[dict]]:
    """`totals` of [since, until) and `weekly` from `weeks_since` (earlier if the period's whole weeks
    reach further back) to `until`, their reads at once on their own read-only connections (SQLite
    parses JSON without holding the GIL). The period's whole weeks back from `until` are summed from
    the weekly figures, so only its first, partial week is read apart."""
    n_whole = int((until - since) / WEEK + 1e-9)
    rest_until = until - n_whole * WEEK  # [since, rest_until): the period's partial first week
    weeks_from = min(weeks_since, rest_until)
    reads = [lambda log: log.shown_by_week(weeks_from, until, until),
             lambda log: _taken(log, weeks_from, until, margins, True), lambda log: _flags(log, since, until)]
    if rest_until > since:
        reads += [lambda log: log.shown_by_week(since, rest_until), lambda log: _taken(log, since, rest_until, margins)]

    def run(read):
        with EventLogReader(events_db) as log:
            return read(log)

    with ThreadPoolExecutor(len(reads)) as pool:
        results = list(pool.map(run, reads))
    shown, taken, flags = results[:3]
    rest_shown, rest_taken = (results[3], results[4]) if len(results) > 3 else ({}, {})
    bins = range(n_whole)
    n, offers = (sum(shown.get(w, (0, 0))[i] for w in bins) + rest_shown.get(0, (0, 0))[i] for i in (0, 1))
    accepted, value = (sum(taken.get(w, [0, 0.0])[i] for w in bins) + rest_taken.get(0, [0, 0.0])[i] for i in (0, 1))
    return (Totals(int(n), int(offers), int(accepted), float(value), *flags),
            _weeks(shown, taken, weeks_from, until))


@dataclass
class Filters:
    """A search of the decision log; every field optional."""

    pseudonym: str | None = None
    channel: str | None = None
    product: str | None = None
    since: float | None = None
    until: float | None = None
    flags: tuple[str, ...] = ()  # among FLAGS


@dataclass
class DecisionRow:
    rowid: int
    decision_id: str
    created_at: float
    pseudonym: str
    channel: str
    offers: list
    context: dict
    feedback: list = field(default_factory=list)  # (product_id, event, value, created_at)


def decisions_page(log: EventLogReader, filters: Filters, before: int | None = None,
                   size: int = PAGE_SIZE) -> tuple[list[DecisionRow], int | None]:
    """The `size` newest decisions matching `filters` after the decision of rowid `before` (None: from
    the newest), with their feedback, and the rowid the next page starts after (None on the last page)."""
    page = log.decision_page(filters.since, filters.until, filters.pseudonym, filters.channel, filters.product,
                             filters.flags, after=before, limit=size + 1)
    more = len(page) > size
    out = [DecisionRow(int(r.rowid), r.decision_id, float(r.created_at), r.customer_pseudonym, r.channel,
                       r.offers if isinstance(r.offers, list) else [], r.context if isinstance(r.context, dict) else {})
           for r in page.iloc[:size].itertuples(index=False)]
    if out:
        by_id = {d.decision_id: d for d in out}
        fb = log.feedback_of(list(by_id))
        for decision_id, product, event, value, at in fb.itertuples(index=False):
            by_id[decision_id].feedback.append((product, event, None if math.isnan(value) else float(value), at))
    return out, (out[-1].rowid if more else None)


def customer_decisions(log: EventLogReader, pseudonym: str, limit: int = 20) -> tuple[list[DecisionRow], int]:
    """A customer's newest decisions (at most `limit`) with their feedback, and how many they have."""
    rows, _ = decisions_page(log, Filters(pseudonym=pseudonym), size=limit)
    return rows, log.count_decisions(customer_pseudonym=pseudonym)


def plan_responses(log: EventLogReader, plan: str, day_start: float, margins: dict[str, float]) -> dict:
    """An outbound plan's logged contacts (`context.plan` = `plan`) sent from the day before `day_start`
    to a week after: contacts and control-group rows per channel, offers taken and their value (EUR)."""
    channels: dict[str, dict] = {}
    sent = []
    for decision_id, channel, n_offers in log.plan_contacts(plan, day_start - 86400.0, day_start + WEEK):
        c = channels.setdefault(channel, {"contacts": 0, "withheld": 0})
        if n_offers:
            c["contacts"] += 1
            sent.append(decision_id)
        else:
            c["withheld"] += 1
    taken, value, responded = 0, 0.0, set()
    for decision_id, product, took, mx in log.outcomes_of(sent):
        responded.add(decision_id)
        if took:
            taken += 1
            value += float(mx) if mx is not None else margins.get(product, 0.0)
    return {"channels": channels, "contacts": len(sent), "taken": taken, "value": value, "responses": len(responded)}
