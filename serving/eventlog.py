"""The writer of the append-only decision, feedback and customer-event log (SQLite in WAL mode),
and the bandit's state. The schema, the vocabulary and the reader monitors use are
`nextbest.eventlog`.

A decision is committed before `/recommend` answers; feedback is idempotent per
(decision, product, event), and the first accept/convert/reject/dismiss of an offer becomes its
reward for the policy. Customer ids are stored only as pseudonyms. The rules read contact
history and real-time events (opt-outs, loans) from here, so they hold when the online store is down.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nextbest.eventlog import ACCEPTED, REJECTED, REWARD, SCHEMA, decode_posterior, encode_array
from nextbest.serving.privacy import private_file

# Placeholders for the rejection events in SQL.
_REJECTED_MARKS = ", ".join("?" * len(REJECTED))


def _json_default(value):
    """Feature values that JSON lacks: numpy scalars and timestamps."""
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


@dataclass(frozen=True)
class Decision:
    decision_id: str
    channel: str
    offers: list[dict]
    context: dict | None = None


class Contradiction(ValueError):
    """Feedback that contradicts a final outcome already recorded for the same offer."""


class EventLog:
    """Thread-safe writer over one SQLite connection."""

    def __init__(self, path: Path | None, durable: bool = True, readonly: bool = False):
        """`durable=False` (simulations only) skips the fsync per write: a crash may lose the last writes.
        `path=None`: an empty log in memory, for reading a history that does not exist yet without
        creating a file. `readonly`: opens an existing log without taking any write (a missing one
        reads as empty, and is not created); writes then fail."""
        self.readonly = readonly
        if path is None or (readonly and not path.exists()):
            self._conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        elif readonly:
            self._conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, check_same_thread=False,
                                         isolation_level=None)
            self._lock = threading.Lock()
            return
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Owner-only (0600): the log holds pseudonyms and every customer's decisions.
            self._conn = sqlite3.connect(str(private_file(path)), check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # FULL: an acknowledged decision survives a crash of the process and of the machine.
        self._conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()

    @staticmethod
    def write_problem(path: Path) -> str | None:
        """Why a decision could not be committed to the log at `path` (None when it can): an existing
        log must take a write transaction (its folder is checked apart)."""
        if not path.exists():
            return None
        try:
            conn = sqlite3.connect(str(path), timeout=5)
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                conn.execute(f"PRAGMA user_version = {int(version)}")  # a real write, changing nothing
            finally:
                conn.close()
        except sqlite3.Error as exc:
            return f"event log {path} cannot be written ({exc})"
        return None

    def log_decision(self, decision_id: str, customer_pseudonym: str, channel: str, k: int, offers: list[dict],
                     model_versions: dict, context: dict, features: dict | None = None,
                     at: float | None = None) -> None:
        """Commits a decision (and, if given, its online features for drift monitoring) in one transaction.

        `at` is the decision's time (epoch seconds, default now): the request's timestamp when it
        gave one (scheduled campaigns, simulations), so contact caps count decisions in their own time.
        """
        row = (decision_id, time.time() if at is None else at, customer_pseudonym, channel, k, json.dumps(offers),
               json.dumps(model_versions), json.dumps(context))
        with self._lock:
            if features is None:
                self._conn.execute("INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
                return
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
                self._conn.execute("INSERT INTO served_features VALUES (?, ?, ?)",
                                   (decision_id, row[1], json.dumps(features, default=_json_default)))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def log_decisions(self, rows: list[tuple]) -> None:
        """Commits many decisions (an outbound plan's contacts) in one transaction: all or none.

        Args:
            rows: (decision_id, at, customer_pseudonym, channel, k, offers, model_versions, context),
                the last three as dicts or lists.
        """
        encoded = [(d, at, who, ch, k, json.dumps(offers), json.dumps(versions), json.dumps(ctx))
                   for d, at, who, ch, k, offers, versions, ctx in rows]
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", encoded)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def plan_decisions(self, plan: str) -> int:
        """How many decisions the outbound plan `plan` (`campaign@date`) logged."""
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM decisions WHERE json_extract(context, '$.plan') = ?",
                                      (plan,)).fetchone()[0]

    def contact_history(self, week_since: float, until: float,
                        rejected_since: float) -> tuple[list[tuple[str, str, int]], list[tuple[str, str]]]:
        """Every customer's history at once, as `history` gives it for one: (pseudonym, channel, decisions
        with offers in [week_since, until)) and (pseudonym, product) rejected or dismissed since `rejected_since`."""
        with self._lock:
            contacts = self._conn.execute(
                "SELECT customer_pseudonym, channel, COUNT(*) FROM decisions WHERE created_at >= ? AND created_at < ? "
                "AND offers != '[]' GROUP BY customer_pseudonym, channel", (week_since, until)).fetchall()
            rejected = self._conn.execute(
                "SELECT DISTINCT d.customer_pseudonym, f.product_id FROM decisions d JOIN feedback f USING "
                f"(decision_id) WHERE f.event IN ({_REJECTED_MARKS}) AND f.created_at >= ?",
                (*REJECTED, rejected_since)).fetchall()
        return contacts, rejected

    def get_decision(self, decision_id: str) -> Decision | None:
        with self._lock:
            row = self._conn.execute("SELECT decision_id, channel, offers, context FROM decisions "
                                     "WHERE decision_id = ?", (decision_id,)).fetchone()
        return None if row is None else Decision(row[0], row[1], json.loads(row[2]), json.loads(row[3]))

    def log_feedback(self, decision_id: str, product_id: str, event: str, value: float | None,
                     occurred_at: float | None = None) -> tuple[bool, float | None]:
        """Records feedback in one transaction with its reward, if it is the offer's first.

        Accept and convert are final: a reject or dismiss of an offer already accepted or converted
        is refused (`Contradiction`) and not recorded. An accept after a reject is recorded (the
        customer changed their mind); the offer's reward stays its first outcome.

        Returns:
            (False if the same (decision, product, event) was already recorded, the new reward or None).

        Raises:
            Contradiction: the event contradicts an outcome already recorded for this offer.
        """
        now = time.time()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                if event in REJECTED:
                    final = self._conn.execute(
                        f"SELECT event FROM feedback WHERE decision_id = ? AND product_id = ? AND event IN "
                        f"({', '.join('?' * len(ACCEPTED))}) LIMIT 1", (decision_id, product_id, *ACCEPTED)).fetchone()
                    if final is not None:
                        raise Contradiction(f"offer {product_id!r} of decision {decision_id!r} was already "
                                            f"recorded as {final[0]!r}, which is final: {event!r} is not recorded")
                cur = self._conn.execute("INSERT OR IGNORE INTO feedback VALUES (?, ?, ?, ?, ?)",
                                         (decision_id, product_id, event, value, occurred_at or now))
                recorded, reward = cur.rowcount == 1, None
                if recorded and event in REWARD:
                    cur = self._conn.execute("INSERT OR IGNORE INTO rewards VALUES (?, ?, ?, ?)",
                                             (decision_id, product_id, REWARD[event], now))
                    reward = REWARD[event] if cur.rowcount == 1 else None
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return recorded, reward

    def rewards_after(self, rowid: int) -> list[tuple[int, str, str, float, str]]:
        """Rewards not yet learnt from: (rowid, decision_id, product_id, reward, decision context JSON)."""
        with self._lock:
            return self._conn.execute(
                "SELECT r.rowid, r.decision_id, r.product_id, r.reward, d.context FROM rewards r "
                "JOIN decisions d USING (decision_id) WHERE r.rowid > ? ORDER BY r.rowid", (rowid,)).fetchall()

    def history(self, customer_pseudonym: str, week_since: float,
                rejected_since: float) -> tuple[dict[str, int], set[str]]:
        """Decisions with offers per channel since `week_since`; offers rejected or dismissed since `rejected_since`."""
        with self._lock:
            contacts = dict(self._conn.execute(
                "SELECT channel, COUNT(*) FROM decisions WHERE customer_pseudonym = ? AND created_at >= ? "
                "AND offers != '[]' GROUP BY channel", (customer_pseudonym, week_since)).fetchall())
            rejected = {r[0] for r in self._conn.execute(
                "SELECT f.product_id FROM decisions d JOIN feedback f USING (decision_id) "
                f"WHERE d.customer_pseudonym = ? AND f.event IN ({_REJECTED_MARKS}) AND f.created_at >= ?",
                (customer_pseudonym, *REJECTED, rejected_since)).fetchall()}
        return contacts, rejected

    def log_customer_event(self, event_id: str, customer_pseudonym: str, event: str, payload: dict,
                           occurred_at: float) -> bool:
        """Records a real-time customer event; False if this event_id was already recorded."""
        with self._lock:
            cur = self._conn.execute("INSERT OR IGNORE INTO customer_events VALUES (?, ?, ?, ?, ?, ?)",
                                     (event_id, customer_pseudonym, event, json.dumps(payload), occurred_at,
                                      time.time()))
        return cur.rowcount == 1

    def customer_events(self, customer_pseudonym: str, since: float | None = None) -> list[tuple[str, dict, float]]:
        """The customer's events (event, payload, occurred_at), oldest first; all if `since` is None."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT event, payload, occurred_at FROM customer_events WHERE customer_pseudonym = ? "
                "AND occurred_at >= ? ORDER BY occurred_at, rowid", (customer_pseudonym, since or 0.0)).fetchall()
        return [(e, json.loads(p), t) for e, p, t in rows]

    def save_policy(self, name: str, signature: str, n_updates: int, last_reward_rowid: int,
                    mean: np.ndarray, cov: np.ndarray) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO policy_state VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (name, signature, n_updates, last_reward_rowid, encode_array(mean),
                                encode_array(cov), time.time()))

    def load_policy(self, name: str, signature: str) -> tuple[int, int, np.ndarray, np.ndarray] | None:
        """(n_updates, last reward rowid, mean, covariance) of the saved posterior, or None."""
        with self._lock:
            row = self._conn.execute("SELECT n_updates, last_reward_rowid, mean, cov FROM policy_state "
                                     "WHERE name = ? AND signature = ?", (name, signature)).fetchone()
        if row is None:
            return None
        return row[0], row[1], *decode_posterior(row[2], row[3])

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {t: self._conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                    for t in ("decisions", "feedback", "rewards", "customer_events")}

    def close(self) -> None:
        with self._lock:
            self._conn.close()
