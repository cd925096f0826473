"""The event log's contract: its SQLite schema, its vocabulary, and the one typed reader.

The service appends every decision, its feedback and rewards, real-time customer events, the
bandit's saved state and a sample of served feature vectors to `<workdir>/events.db`
(`nextbest.serving.eventlog.EventLog` is the only writer). Everything that reads the log
afterwards (business KPIs, uplift, off-policy evaluation, served-feature and served-score drift,
the acceptance section, the replay simulator's reports, the console's pages) reads it through
`EventLogReader`: a read-only connection that never writes to the live log, and frames with declared
dtypes. Its bounded reads (a page of decisions, sums over a window, one customer's rows) follow the
indexes, for pages a person waits for on a log of millions of decisions.

Times are epoch seconds (UTC), float64. A decision's business time `at` is the time it was made
for: the request's timestamp (`context.request.at`; the simulated clock in replays), else its
`created_at`. Windows are half-open, `[since, until)`, unless a method says otherwise.

Out-of-range times: a row whose time is not a number between 1678-01-01 and 2262-01-01 (UTC) is
left out of every result. Such a time cannot become a pandas timestamp, or a calendar period of
one, and no real decision has it. The times checked are the ones a result returns or is windowed
on: a decision's `created_at` always, its `at` when returned or windowed on; a feedback row's,
reward's or served feature vector's `created_at`; a customer event's `occurred_at` and `created_at`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path

import numpy as np
import pandas as pd

TABLES = ("decisions", "feedback", "rewards", "policy_state", "customer_events", "served_features")

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    decision_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    customer_pseudonym TEXT NOT NULL,
    channel TEXT NOT NULL,
    k INTEGER NOT NULL,
    offers TEXT NOT NULL,          -- JSON list of {product_id, score, rank}
    model_versions TEXT NOT NULL,  -- JSON
    context TEXT NOT NULL          -- JSON: request context and model inputs needed to replay the decision
);
CREATE INDEX IF NOT EXISTS decisions_by_customer ON decisions(customer_pseudonym, created_at);
-- Time windows (monitoring, the console's weekly figures and date searches) read a range of this index.
CREATE INDEX IF NOT EXISTS decisions_by_time ON decisions(created_at);
CREATE TABLE IF NOT EXISTS feedback (
    decision_id TEXT NOT NULL REFERENCES decisions(decision_id),
    product_id TEXT NOT NULL,
    event TEXT NOT NULL,
    value REAL,
    created_at REAL NOT NULL,
    PRIMARY KEY (decision_id, product_id, event)
);
-- Feedback received since a time (the console's figures of a period join it to its decisions).
CREATE INDEX IF NOT EXISTS feedback_by_time ON feedback(created_at);
-- One reward per served offer: the first accept/convert (1) or reject/dismiss (0). Rowid order is
-- the order the policy learns in, so a restart replays exactly what it had not yet saved.
CREATE TABLE IF NOT EXISTS rewards (
    decision_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    reward REAL NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (decision_id, product_id)
);
CREATE TABLE IF NOT EXISTS policy_state (
    name TEXT NOT NULL,
    signature TEXT NOT NULL,
    n_updates INTEGER NOT NULL,
    last_reward_rowid INTEGER NOT NULL,
    mean BLOB NOT NULL,   -- float64 little-endian
    cov BLOB NOT NULL,    -- float64 little-endian, row-major
    saved_at REAL NOT NULL,
    PRIMARY KEY (name, signature)
);
CREATE TABLE IF NOT EXISTS customer_events (
    event_id TEXT PRIMARY KEY,
    customer_pseudonym TEXT NOT NULL,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,  -- JSON
    occurred_at REAL NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_customer ON customer_events(customer_pseudonym, occurred_at);
-- The online feature vector of a sampled share of decisions: drift monitoring's "features at serving time".
CREATE TABLE IF NOT EXISTS served_features (
    decision_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    features TEXT NOT NULL  -- JSON {feature: value}
);
"""

# -- vocabulary --------------------------------------------------------------------------------

FEEDBACK_EVENTS = ("impression", "click", "accept", "reject", "convert", "dismiss")
ACCEPTED = ("accept", "convert")  # feedback that means the offer was taken
REJECTED = ("reject", "dismiss")
# The first accept/convert (1) or reject/dismiss (0) of a served offer is its reward for the policy.
REWARD = {"accept": 1.0, "convert": 1.0, "reject": 0.0, "dismiss": 0.0}
CUSTOMER_EVENTS = ("salary_received", "large_deposit", "loan_disbursed", "product_page_view", "product_acquired",
                   "opt_out", "opt_in", "consent_granted", "consent_withdrawn")
# What each customer event needs besides its name.
PRODUCT_EVENTS = ("product_page_view", "loan_disbursed", "product_acquired")  # product_id
AMOUNT_EVENTS = ("salary_received", "large_deposit")  # amount
CONSENT_CHANGES = ("consent_granted", "consent_withdrawn")  # consent
# Posted by the bank's core for offered and unoffered products alike: payload {product_id, value?}.
PRODUCT_ACQUIRED = "product_acquired"

_ACCEPTED_SQL = ", ".join(f"'{e}'" for e in ACCEPTED)
WEEK = 7 * 86400.0
# Conditions a page of decisions can be filtered on (`EventLogReader.decision_page`), over the decision row `d`.
DECISION_CONDITIONS = {
    "exploring": "d.context ->> '$.exploring' = 1",
    "degraded": "d.context ->> '$.degraded' IS NOT NULL",
    "suppressed": "IFNULL(json_array_length(d.context -> '$.suppressed'), 0) > 0",
    "holdout": "d.context ->> '$.holdout' = 1",
    "empty": "IFNULL(json_array_length(d.offers), 0) = 0",
}

# Times a result may hold (epoch seconds, UTC): [1678-01-01, 2262-01-01), inside pandas' datetime64[ns].
EARLIEST = -9_214_560_000.0
LATEST = 9_214_646_400.0


def encode_array(values: np.ndarray) -> bytes:
    """A float64 array as the log stores it (little-endian, row-major)."""
    return np.ascontiguousarray(values, "<f8").tobytes()


def decode_posterior(mean: bytes, cov: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(mean (d,), covariance (d, d)) from the two blobs of a `policy_state` row."""
    m = np.frombuffer(mean, "<f8").copy()
    return m, np.frombuffer(cov, "<f8").copy().reshape(len(m), len(m))


class EventLogError(ValueError):
    """The file is not an event log (the message names it)."""


@dataclass(frozen=True)
class SavedPolicy:
    """The bandit's saved posterior: `last_reward_rowid` is the last reward it has learnt from."""

    name: str
    signature: str
    n_updates: int
    last_reward_rowid: int
    mean: np.ndarray
    cov: np.ndarray
    saved_at: float


@dataclass(frozen=True)
class Field:
    """A column a reader method can return: its SQL and its kind.

    Kinds: int (int64), float (float64, NaN where absent or not a number), str (object: text or
    None), bool (true where the logged JSON value is true or 1), list and dict (parsed JSON; an
    absent or null value gives an empty one).
    """

    sql: str
    kind: str


AT_SQL = "COALESCE(d.context ->> '$.request.at', d.created_at)"
DECISION_FIELDS = {
    "rowid": Field("d.rowid", "int"),
    "decision_id": Field("d.decision_id", "str"),
    "created_at": Field("d.created_at", "float"),
    "at": Field(AT_SQL, "float"),
    "customer_pseudonym": Field("d.customer_pseudonym", "str"),
    "channel": Field("d.channel", "str"),
    "k": Field("d.k", "int"),
    "offers": Field("d.offers", "list"),
    "model_versions": Field("d.model_versions", "dict"),
    "context": Field("d.context", "dict"),
    # Fields of the context, read by SQLite without parsing it in Python (each row's context once).
    "n_offers": Field("IFNULL(json_array_length(d.offers), 0)", "int"),
    "policy": Field("d.context ->> '$.policy'", "str"),
    "segment": Field("d.context ->> '$.segment'", "str"),
    "exploring": Field("d.context ->> '$.exploring'", "bool"),
    "holdout": Field("d.context ->> '$.holdout'", "bool"),
    "degraded": Field("d.context ->> '$.degraded'", "str"),  # why the decision fell back, None if it did not
    "blocked": Field("d.context ->> '$.blocked'", "str"),  # the rule that blocked the channel, if any
    "suppressed_json": Field("d.context -> '$.suppressed'", "str"),  # [{product_id, rule}] as minified JSON
    "groups_json": Field("d.context -> '$.groups'", "str"),  # {campaign: control|treatment} as minified JSON
}
DECISION_COLUMNS = ("rowid", "decision_id", "created_at", "customer_pseudonym", "channel", "k", "offers",
                    "model_versions", "context")
OFFER_FIELDS = {
    "decision_rowid": Field("d.rowid", "int"),
    "decision_id": Field("d.decision_id", "str"),
    "rank": Field("IFNULL(o.value ->> 'rank', 0)", "int"),
    "product_id": Field("o.value ->> 'product_id'", "str"),
    "explored": Field("o.value ->> 'explored'", "bool"),
    "propensity": Field("o.value ->> 'propensity'", "float"),
    "score": Field("o.value ->> 'score'", "float"),
}
FEEDBACK_FIELDS = {
    "rowid": Field("f.rowid", "int"),
    "decision_rowid": Field("d.rowid", "int"),
    "decision_id": Field("f.decision_id", "str"),
    "customer_pseudonym": Field("d.customer_pseudonym", "str"),
    "product_id": Field("f.product_id", "str"),
    "event": Field("f.event", "str"),
    "value": Field("f.value", "float"),
    "created_at": Field("f.created_at", "float"),
}
REWARD_FIELDS = {name: Field(name, kind) for name, kind in (
    ("rowid", "int"), ("decision_id", "str"), ("product_id", "str"), ("reward", "float"), ("created_at", "float"))}
CUSTOMER_EVENT_FIELDS = {
    "rowid": Field("rowid", "int"),
    "event_id": Field("event_id", "str"),
    "customer_pseudonym": Field("customer_pseudonym", "str"),
    "event": Field("event", "str"),
    "payload": Field("payload", "dict"),
    "occurred_at": Field("occurred_at", "float"),
    "created_at": Field("created_at", "float"),
    "product_id": Field("payload ->> '$.product_id'", "str"),  # of product events
    "value": Field("payload ->> '$.value'", "float"),  # of product_acquired, when the bank gave one
}
SERVED_FEATURE_FIELDS = {"rowid": Field("rowid", "int"), "decision_id": Field("decision_id", "str"),
                         "created_at": Field("created_at", "float"), "features": Field("features", "dict")}
_DTYPES = {"int": np.int64, "float": np.float64, "bool": bool, "str": object, "list": object, "dict": object}


class EventLogReader:
    """Read-only, typed access to an event log; a context manager.

    Args:
        path: the log, e.g. `<workdir>/events.db`. A log the service has not finished creating, or
            one from before a table existed, reads as empty for the missing tables.

    Raises:
        FileNotFoundError: there is no such file.
        EventLogError: the file is not an SQLite database, or has none of the log's tables.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no event log here (the service writes it on its first decision)")
        self._conn = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            names = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise EventLogError(f"{self.path}: not an event log ({exc})") from None
        self.tables = frozenset(names & set(TABLES))
        if names and not self.tables:
            self._conn.close()
            raise EventLogError(f"{self.path}: not an event log (none of the tables {', '.join(TABLES)})")

    def __enter__(self) -> EventLogReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    # -- rows ----------------------------------------------------------------------------------

    def decisions(self, columns: Sequence[str] = DECISION_COLUMNS, since: float | None = None,
                  until: float | None = None, by: str = "at") -> pd.DataFrame:
        """Decisions in `[since, until)` of time `by` ("at", the business time, or "created_at"), in log order.

        Args:
            columns: names of `DECISION_FIELDS`; the default is the stored row with its JSON parsed.
        """
        where, params = self._decision_window(columns, since, until, by)
        return self._frame("decisions", DECISION_FIELDS, columns, "decisions d", where, params, "d.rowid")

    def offers(self, columns: Sequence[str] = ("decision_rowid", "decision_id", "rank", "product_id"),
               since: float | None = None, until: float | None = None, by: str = "at") -> pd.DataFrame:
        """One row per served offer of the decisions in `[since, until)` of time `by` (no window:
        of every decision), in log order, each decision's offers as logged. Columns: names of `OFFER_FIELDS`."""
        where, params = self._decision_window((), since, until, by)
        return self._frame("decisions", OFFER_FIELDS, columns, "decisions d, json_each(d.offers) o", where, params,
                           "d.rowid")

    def feedback(self, columns: Sequence[str] = ("decision_id", "product_id", "event", "value", "created_at"),
                 events: Sequence[str] | None = None, since: float | None = None, until: float | None = None,
                 include_until: bool = False) -> pd.DataFrame:
        """Feedback on logged decisions, received in `[since, until)` (`until` included with
        `include_until`), of the given events (None: all), in the order it arrived.
        Columns: names of `FEEDBACK_FIELDS` (the decision's rowid and pseudonym included)."""
        if events is not None and not events:
            return self._empty(FEEDBACK_FIELDS, columns)
        where, params = _window("f.created_at", since, until, include_until)
        if events is not None:
            where += f" AND f.event IN ({', '.join('?' * len(events))})"
            params += tuple(events)
        return self._frame("feedback", FEEDBACK_FIELDS, columns, "feedback f JOIN decisions d USING (decision_id)",
                           where, params, "f.rowid", needs=("decisions",))

    def rewards(self, columns: Sequence[str] = tuple(REWARD_FIELDS)) -> pd.DataFrame:
        """Each served offer's reward (1 taken, 0 turned down), in the order the policy learns them."""
        where, params = _window("created_at", None, None)
        return self._frame("rewards", REWARD_FIELDS, columns, "rewards", where, params, "rowid")

    def customer_events(self, columns: Sequence[str] = ("event_id", "customer_pseudonym", "event", "payload",
                                                        "occurred_at"),
                        events: Sequence[str] | None = None, since: float | None = None, until: float | None = None,
                        include_until: bool = False) -> pd.DataFrame:
        """Customer events that occurred in `[since, until)` (`until` included with `include_until`),
        of the given events (None: all), in the order they were recorded. Columns: names of
        `CUSTOMER_EVENT_FIELDS` (`product_id` and `value` are read from the payload)."""
        if events is not None and not events:
            return self._empty(CUSTOMER_EVENT_FIELDS, columns)
        where, params = _window("occurred_at", since, until, include_until)
        created, more = _window("created_at", None, None)
        where, params = f"{where} AND {created}", params + more
        if events is not None:
            where += f" AND event IN ({', '.join('?' * len(events))})"
            params += tuple(events)
        return self._frame("customer_events", CUSTOMER_EVENT_FIELDS, columns, "customer_events", where, params,
                           "rowid")

    def served_features(self, columns: Sequence[str] = ("decision_id", "created_at", "features")) -> pd.DataFrame:
        """The online feature vectors logged with a sample of decisions (`features`: {feature: value})."""
        where, params = _window("created_at", None, None)
        return self._frame("served_features", SERVED_FEATURE_FIELDS, columns, "served_features", where, params,
                           "rowid")

    def policy(self, name: str, signature: str) -> SavedPolicy | None:
        """The saved posterior of policy `name` for a featuriser `signature`, or None."""
        if "policy_state" not in self.tables:
            return None
        row = self._conn.execute("SELECT n_updates, last_reward_rowid, mean, cov, saved_at FROM policy_state "
                                 "WHERE name = ? AND signature = ?", (name, signature)).fetchone()
        if row is None:
            return None
        mean, cov = decode_posterior(row[2], row[3])
        return SavedPolicy(name, signature, int(row[0]), int(row[1]), mean, cov, float(row[4]))

    def counts(self) -> dict[str, int]:
        """Rows per table of the log, out-of-range times included (0 for a table it does not have)."""
        return {t: self._conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] if t in self.tables else 0
                for t in TABLES if t != "policy_state"}

    # -- bounded reads: a page or a window at a time, along the indexes (the console's pages) -----

    def time_span(self) -> tuple[float, float] | None:
        """(first, last) `created_at` of the logged decisions, None when there are none (two index seeks)."""
        if "decisions" not in self.tables:
            return None
        ends = [self._conn.execute("SELECT created_at FROM decisions WHERE created_at >= ? AND created_at < ? "
                                   f"ORDER BY created_at {order} LIMIT 1", (EARLIEST, LATEST)).fetchone()
                for order in ("ASC", "DESC")]
        return None if ends[0] is None else (float(ends[0][0]), float(ends[1][0]))

    def count_decisions(self, since: float | None = None, until: float | None = None,
                        customer_pseudonym: str | None = None) -> int:
        """Decisions logged in `[since, until)` (of one customer), read from an index alone."""
        if "decisions" not in self.tables:
            return 0
        where, params = _window("created_at", since, until)
        if customer_pseudonym is not None:
            where, params = f"customer_pseudonym = ? AND {where}", (customer_pseudonym, *params)
        return int(self._conn.execute(f"SELECT COUNT(*) FROM decisions WHERE {where}", params).fetchone()[0])

    def decision_page(self, since: float | None = None, until: float | None = None,
                      customer_pseudonym: str | None = None, channel: str | None = None,
                      product_id: str | None = None, conditions: Sequence[str] = (), after: int | None = None,
                      limit: int = 50) -> pd.DataFrame:
        """Up to `limit` decisions logged in `[since, until)`, newest first (by `created_at`, then rowid),
        that match every filter given and come after the decision of rowid `after` in that order.

        The time index (or the customer's) gives the order, so a page reads its own rows and those the
        filters skip, however deep it is. Columns: rowid, decision_id, created_at, customer_pseudonym,
        channel, offers (list), context (dict).

        Args:
            product_id: decisions that showed this product.
            conditions: names of `DECISION_CONDITIONS`, all of which must hold.
        """
        columns = ("rowid", "decision_id", "created_at", "customer_pseudonym", "channel", "offers", "context")
        unknown = [c for c in conditions if c not in DECISION_CONDITIONS]
        if unknown:
            raise ValueError(f"unknown condition(s) {unknown}; known: {', '.join(DECISION_CONDITIONS)}")
        if "decisions" not in self.tables:
            return self._empty(DECISION_FIELDS, columns)
        if after is not None:
            row = self._conn.execute("SELECT created_at FROM decisions WHERE rowid = ?", (int(after),)).fetchone()
            if row is None:
                return self._empty(DECISION_FIELDS, columns)
        lo = EARLIEST if since is None else max(float(since), EARLIEST)
        hi = LATEST if until is None else min(float(until), LATEST)
        # One upper bound on the time, so that the index seeks to the page's start (the planner cannot tell
        # which of two bound parameters is tighter); the row value breaks ties in time.
        upper, params = ("d.created_at < ?", [hi]) if after is None or hi <= row[0] else ("d.created_at <= ?",
                                                                                          [row[0]])
        clauses, params = ["d.created_at >= ?", upper], [lo, *params]
        if after is not None:
            clauses.append("(d.created_at, d.rowid) < (?, ?)")
            params += [row[0], int(after)]
        for value, sql in ((customer_pseudonym, "d.customer_pseudonym = ?"), (channel, "d.channel = ?"),
                           (product_id, "EXISTS (SELECT 1 FROM json_each(d.offers) o "
                                        "WHERE o.value ->> 'product_id' = ?)")):
            if value is not None:
                clauses.append(sql)
                params.append(value)
        clauses += [DECISION_CONDITIONS[c] for c in conditions]
        select = ", ".join(DECISION_FIELDS[c].sql for c in columns)
        rows = self._conn.execute(f"SELECT {select} FROM decisions d WHERE {' AND '.join(clauses)} "
                                  "ORDER BY d.created_at DESC, d.rowid DESC LIMIT ?", (*params, int(limit))).fetchall()
        data = {c: _typed(list(map(itemgetter(i), rows)), DECISION_FIELDS[c].kind) for i, c in enumerate(columns)}
        return pd.DataFrame(data, columns=list(columns))

    def feedback_of(self, decision_ids: Sequence[str]) -> pd.DataFrame:
        """The feedback on the given decisions, in the order it arrived (by the feedback's key index).
        Columns: decision_id, product_id, event, value, created_at."""
        columns = ("decision_id", "product_id", "event", "value", "created_at")
        if "feedback" not in self.tables or not decision_ids:
            return self._empty(FEEDBACK_FIELDS, columns)
        rows = []
        for chunk in _chunks(list(decision_ids)):
            rows += self._conn.execute(
                f"SELECT decision_id, product_id, event, value, created_at FROM feedback "
                f"WHERE decision_id IN ({', '.join('?' * len(chunk))})", chunk).fetchall()
        rows.sort(key=itemgetter(4))
        data = {c: _typed(list(map(itemgetter(i), rows)), FEEDBACK_FIELDS[c].kind) for i, c in enumerate(columns)}
        return pd.DataFrame(data, columns=list(columns))

    def shown_by_week(self, since: float, until: float, weeks_to: float | None = None) -> dict[int, tuple[int, int]]:
        """{week: (decisions, offers shown)} of the decisions logged in `[since, until)`; weeks are 7-day bins
        counted back from `weeks_to` (0: the 7 days before it), or one bin, 0, without it."""
        if "decisions" not in self.tables:
            return {}
        week, extra = _week_bin(weeks_to)
        return {int(w): (int(n), int(o)) for w, n, o in self._conn.execute(
            f"SELECT {week} AS w, COUNT(*), IFNULL(SUM(json_array_length(d.offers)), 0) FROM decisions d "
            "WHERE d.created_at >= ? AND d.created_at < ? GROUP BY w", (*extra, since, until))}

    def taken_by_week(self, since: float, until: float,
                      weeks_to: float | None = None) -> list[tuple[int, str, float | None]]:
        """One (week, product_id, value) per offer taken (accept or convert) of the decisions logged in
        `[since, until)`: the largest value its feedback gave, None if none did; weeks as in `shown_by_week`.

        Read from the feedback side (its time index): feedback comes after its decision, so only
        feedback from `since` on is joined to its decision.
        """
        if not {"decisions", "feedback"} <= self.tables:
            return []
        week, extra = _week_bin(weeks_to)
        return self._conn.execute(
            f"SELECT {week}, f.product_id, MAX(f.value) FROM feedback f CROSS JOIN decisions d "
            f"ON d.decision_id = f.decision_id WHERE f.created_at >= ? AND f.event IN ({_ACCEPTED_SQL}) "
            "AND d.created_at >= ? AND d.created_at < ? GROUP BY d.rowid, f.product_id",
            (*extra, since, since, until)).fetchall()

    def condition_counts(self, since: float, until: float, conditions: Sequence[str]) -> dict[str, int]:
        """How many decisions logged in `[since, until)` meet each of `conditions` (names of `DECISION_CONDITIONS`)."""
        if "decisions" not in self.tables or not conditions:
            return {c: 0 for c in conditions}
        sums = ", ".join(f"IFNULL(SUM({DECISION_CONDITIONS[c]}), 0)" for c in conditions)
        row = self._conn.execute(f"SELECT {sums} FROM decisions d WHERE d.created_at >= ? AND d.created_at < ?",
                                 (since, until)).fetchone()
        return {c: int(v) for c, v in zip(conditions, row)}

    def plan_contacts(self, plan: str, since: float, until: float) -> list[tuple[str, str, int]]:
        """(decision_id, channel, offers) of the decisions an outbound plan (`context.plan`, "campaign@date")
        logged in `[since, until)`."""
        if "decisions" not in self.tables:
            return []
        return self._conn.execute(
            "SELECT d.decision_id, d.channel, IFNULL(json_array_length(d.offers), 0) FROM decisions d "
            "WHERE d.created_at >= ? AND d.created_at < ? AND d.context ->> '$.plan' = ?",
            (since, until, plan)).fetchall()

    def outcomes_of(self, decision_ids: Sequence[str]) -> list[tuple[str, str, bool, float | None]]:
        """(decision_id, product_id, taken, value) per offer of the given decisions that got feedback:
        taken when accepted or converted, with the largest value its accept or convert feedback gave."""
        if "feedback" not in self.tables:
            return []
        out = []
        for chunk in _chunks(list(decision_ids)):
            out += [(d, p, bool(t), v) for d, p, t, v in self._conn.execute(
                f"SELECT decision_id, product_id, MAX(event IN ({_ACCEPTED_SQL})), "
                f"MAX(CASE WHEN event IN ({_ACCEPTED_SQL}) THEN value END) FROM feedback "
                f"WHERE decision_id IN ({', '.join('?' * len(chunk))}) GROUP BY decision_id, product_id", chunk)]
        return out

    def events_of(self, customer_pseudonym: str, limit: int = 20) -> list[tuple[str, dict, float]]:
        """A customer's newest events (event, payload, occurred_at), at most `limit`."""
        if "customer_events" not in self.tables:
            return []
        rows = self._conn.execute("SELECT event, payload, occurred_at FROM customer_events "
                                  "WHERE customer_pseudonym = ? ORDER BY occurred_at DESC LIMIT ?",
                                  (customer_pseudonym, int(limit))).fetchall()
        payloads = _typed([r[1] for r in rows], "dict")
        return [(r[0], payload, float(r[2])) for r, payload in zip(rows, payloads)]

    # -- machinery -----------------------------------------------------------------------------

    @staticmethod
    def _decision_window(columns, since, until, by: str) -> tuple[str, tuple]:
        """The created_at range, and the window on `by` (checked for range whenever returned)."""
        if by not in ("at", "created_at"):
            raise ValueError(f"by: 'at' or 'created_at', not {by!r}")
        where, params = _window("d.created_at", since if by == "created_at" else None,
                                until if by == "created_at" else None)
        if by == "at" and (since is not None or until is not None or "at" in columns):
            more, extra = _window(AT_SQL, since, until)
            where, params = f"{where} AND {more}", params + extra
        return where, params

    def _empty(self, fields: dict[str, Field], columns: Sequence[str]) -> pd.DataFrame:
        _check(fields, columns)
        return pd.DataFrame({c: np.zeros(0, _DTYPES[fields[c].kind]) for c in columns}, columns=list(columns))

    def _frame(self, table: str, fields: dict[str, Field], columns: Sequence[str], source: str, where: str,
               params: tuple, order: str, needs: tuple[str, ...] = ()) -> pd.DataFrame:
        _check(fields, columns)
        if not {table, *needs} <= self.tables:
            return self._empty(fields, columns)
        select = ", ".join(fields[c].sql for c in columns)
        rows = self._conn.execute(f"SELECT {select} FROM {source} WHERE {where} ORDER BY {order}", params).fetchall()
        data = {c: _typed(list(map(itemgetter(i), rows)), fields[c].kind) for i, c in enumerate(columns)}
        return pd.DataFrame(data, columns=list(columns))


def _week_bin(weeks_to: float | None) -> tuple[str, tuple]:
    """SQL of a decision's 7-day bin counted back from `weeks_to` (one bin, 0, without it)."""
    return ("0", ()) if weeks_to is None else ("CAST((? - d.created_at) / ? AS INTEGER)", (float(weeks_to), WEEK))


def _chunks(values: list, size: int = 500):
    """Slices of at most `size` values, for `IN (...)` lists within SQLite's parameter limit."""
    for i in range(0, len(values), size):
        yield tuple(values[i:i + size])


def _check(fields: dict[str, Field], columns: Sequence[str]) -> None:
    if isinstance(columns, str):
        raise TypeError(f"columns: a sequence of names, not the string {columns!r}")
    unknown = [c for c in columns if c not in fields]
    if unknown:
        raise ValueError(f"unknown column(s) {unknown}; known: {', '.join(fields)}")


def _window(expr: str, since: float | None, until: float | None, include_until: bool = False) -> tuple[str, tuple]:
    """SQL keeping `expr` in `[since, until)` (or `[since, until]`) and in [EARLIEST, LATEST).

    Text and NULL fail every numeric comparison in SQLite, so they never pass.
    """
    lo = EARLIEST if since is None else max(float(since), EARLIEST)
    if until is None or float(until) >= LATEST:
        return f"{expr} >= ? AND {expr} < ?", (lo, LATEST)
    return f"{expr} >= ? AND {expr} {'<=' if include_until else '<'} ?", (lo, float(until))


def _typed(values: list, kind: str) -> np.ndarray:
    """One fetched column as its kind's dtype."""
    if kind == "float":
        try:
            return np.array(values, np.float64)
        except (TypeError, ValueError):  # a text value: not a number
            return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(np.float64)
    if kind == "int":
        try:
            return np.array(values, np.int64)
        except (TypeError, ValueError, OverflowError):
            return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").fillna(0).to_numpy(np.int64)
    if kind == "bool":
        return np.asarray(np.array(values, dtype=object) == 1, dtype=bool)
    if kind == "str":
        out = np.array(values, dtype=object).reshape(len(values))
        if pd.api.types.infer_dtype(out, skipna=True) in ("string", "empty"):  # the usual case, checked in C
            return out
        items = (v if v is None or type(v) is str else str(v) for v in values)
    else:
        empty = list if kind == "list" else dict
        items = ((json.loads(v) if v is not None else None) or empty() for v in values)
    return np.fromiter(items, dtype=object, count=len(values))
