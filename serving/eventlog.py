"""Append-only decision and feedback log (SQLite in WAL mode).

A decision is committed before `/recommend` answers; feedback is idempotent per
(decision, product, event). Customer ids are stored only as pseudonyms.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

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
CREATE TABLE IF NOT EXISTS feedback (
    decision_id TEXT NOT NULL REFERENCES decisions(decision_id),
    product_id TEXT NOT NULL,
    event TEXT NOT NULL,
    value REAL,
    created_at REAL NOT NULL,
    PRIMARY KEY (decision_id, product_id, event)
);
"""


@dataclass(frozen=True)
class Decision:
    decision_id: str
    channel: str
    offers: list[dict]


class EventLog:
    """Thread-safe writer over one SQLite connection."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # FULL: an acknowledged decision survives a crash of the process and of the machine.
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()

    def log_decision(self, decision_id: str, customer_pseudonym: str, channel: str, k: int, offers: list[dict],
                     model_versions: dict, context: dict) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (decision_id, time.time(), customer_pseudonym, channel, k, json.dumps(offers),
                 json.dumps(model_versions), json.dumps(context)))

    def get_decision(self, decision_id: str) -> Decision | None:
        with self._lock:
            row = self._conn.execute("SELECT decision_id, channel, offers FROM decisions WHERE decision_id = ?",
                                     (decision_id,)).fetchone()
        return None if row is None else Decision(row[0], row[1], json.loads(row[2]))

    def log_feedback(self, decision_id: str, product_id: str, event: str, value: float | None) -> bool:
        """Records feedback; returns False if the same (decision, product, event) was already recorded."""
        with self._lock:
            cur = self._conn.execute("INSERT OR IGNORE INTO feedback VALUES (?, ?, ?, ?, ?)",
                                     (decision_id, product_id, event, value, time.time()))
        return cur.rowcount == 1

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {t: self._conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("decisions", "feedback")}

    def close(self) -> None:
        with self._lock:
            self._conn.close()
