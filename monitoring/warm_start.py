"""Learning the bandit's acceptance model from history, before its first decision.

Without history the policy starts from its prior (the champion model's probability, re-scaled)
and pays to learn online. A bank has history: its own offer history (`raw/offers.parquet`: offer,
channel, time, response) and, after a first deployment, decision logs. Each becomes rows of the
served featuriser with their answers; the posterior is the prior updated by all of them at once
(`Posterior.fit`) and is saved as the policy's snapshot, so the service starts from it.

- Offer history: the model's probability of the offered product is the registered champion's on
  the latest feature snapshot at or before the offer (what the service would have scored then);
  the page view and engagement inputs come from the same snapshot. Answers: `accept` is 1,
  `reject` and `no_response` are 0 (a contact that did not convert). The propensity of a past
  campaign is not known: every offer counts once.
- Decision logs: each answered offer's row is rebuilt from its logged context, as the service
  learns from it. Each counts once by default. With `max_weight` above 1, a logged offer's weight
  is the inverse of its logged propensity, clipped at `max_weight` and scaled to average 1 over the
  log, so that the log speaks for the offers the logging policy seldom made. On the bandit
  benchmark that weighting cost more than it gave: the acceptance model is the same whoever chose
  the offers, and the weights add variance (docs/experiments.md, "Learning from history").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP
from nextbest.eventlog import EventLogReader
from nextbest.settings import Paths

ANSWERS = {"accept": 1.0, "reject": 0.0, "no_response": 0.0}
OFFER_COLUMNS = ("customer_id", "product_id", "channel", "offered_at", "response")
MAX_OFFER_ROWS = 1_000_000


@dataclass
class History:
    """Feature rows with their answers and weights, from one source."""

    source: str
    x: np.ndarray       # (n, featuriser.dim)
    reward: np.ndarray  # (n,) 0/1
    weight: np.ndarray  # (n,)
    skipped: dict[str, int] = field(default_factory=dict)  # rows left out, by reason
    last_reward_rowid: int = 0  # of a decision log: the last reward read

    def summary(self) -> dict:
        return {"source": self.source, "rows": int(len(self.reward)), "accepted": int(self.reward.sum()),
                "acceptance": float(self.reward.mean()) if len(self.reward) else None,
                "weight_max": float(self.weight.max()) if len(self.weight) else None, "skipped": self.skipped}


def offer_history(paths: Paths, featuriser, offers: pd.DataFrame, rescorer=None,
                  max_rows: int = MAX_OFFER_ROWS) -> History:
    """Rows of the offer history (`raw/offers.parquet`'s columns) for `featuriser`.

    Args:
        max_rows: the most recent offers kept (the rows are held in memory: dim floats each).
        rescorer: P(acquire) per (pseudonym, time) (`monitoring.rescore.model_rescorer`); default the
            registered nbp champion on the work dir's feature tables.

    Raises:
        ValueError: a column is missing or a response is not accept, reject or no_response (named).
    """
    from nextbest.serving.bandit import Context
    from nextbest.serving.privacy import load_key, pseudonymise

    source = str(paths.raw / "offers.parquet")
    missing = [c for c in OFFER_COLUMNS if c not in offers.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {', '.join(missing)}")
    bad = sorted(set(offers["response"].dropna().astype(str)) - set(ANSWERS))
    if bad:
        raise ValueError(f"{source}: column 'response' has value(s) {', '.join(map(repr, bad[:5]))}; "
                         f"expected one of {', '.join(ANSWERS)}")
    skipped: dict[str, int] = {}

    def drop(mask: np.ndarray, reason: str) -> None:
        if mask.any():
            skipped[reason] = skipped.get(reason, 0) + int(mask.sum())

    frame = offers.loc[:, list(OFFER_COLUMNS)].copy()
    frame["offered_at"] = pd.to_datetime(frame["offered_at"], utc=True, errors="coerce")
    keep = frame["response"].notna().to_numpy() & frame["offered_at"].notna().to_numpy()
    drop(~keep, "no response or time")
    known_arm = frame["product_id"].astype(str).isin(featuriser.arms).to_numpy()
    drop(keep & ~known_arm, "product not in the catalogue")
    known_channel = frame["channel"].astype(str).isin(featuriser.channels).to_numpy()
    drop(keep & known_arm & ~known_channel, "unknown channel")
    frame = frame[keep & known_arm & known_channel].reset_index(drop=True)
    if len(frame) > max_rows:  # the most recent offers: the bank's behaviour drifts, memory is finite
        frame = frame.sort_values("offered_at", kind="stable")
        skipped[f"older than the latest {max_rows:,} offers"] = len(frame) - max_rows
        frame = frame.iloc[-max_rows:].reset_index(drop=True)
    if rescorer is None:
        from nextbest.constants import NBP_MODEL_NAME
        from nextbest.monitoring.rescore import model_rescorer

        rescorer = model_rescorer(paths, NBP_MODEL_NAME, "champion")
    key = load_key(paths.root)
    ids = frame[CUSTOMER_ID].astype(str)
    pseudonyms = ids.map({c: pseudonymise(c, key) for c in ids.unique()}).tolist()
    at = (frame["offered_at"].astype("int64") / 1e9).to_numpy()
    probs = rescorer.score(pseudonyms, at) if len(frame) else np.zeros((0, len(rescorer.products)))
    index = {p: j for j, p in enumerate(rescorer.products)}
    scored = np.array([p in index for p in frame["product_id"]], dtype=bool)
    base = np.full(len(frame), np.nan)
    rows = np.flatnonzero(scored)
    base[rows] = probs[rows, [index[p] for p in frame["product_id"].to_numpy()[rows]]]
    drop(~scored, "not a product the champion scores (an action)")
    drop(scored & ~np.isfinite(base), "no feature snapshot at or before the offer")
    inputs = _activity(paths, featuriser.arms, frame[CUSTOMER_ID].astype(str), frame["offered_at"])
    x, reward = [], []
    for i in np.flatnonzero(np.isfinite(base)):
        row = frame.iloc[i]
        when = row["offered_at"]
        ctx = Context(str(row["channel"]), when.hour, when.weekday(), float(inputs["engagement"][i]))
        arm = str(row["product_id"])
        x.append(featuriser.matrix([arm], np.array([base[i]]), np.array([inputs["viewed"][i].get(arm, 0.0)]), ctx)[0])
        reward.append(ANSWERS[str(row["response"])])
    x_arr = np.vstack(x) if x else np.zeros((0, featuriser.dim))
    return History(source, x_arr, np.array(reward, dtype=float), np.ones(len(reward)), skipped)


def _activity(paths: Paths, arms: list[str], customers: pd.Series, when: pd.Series) -> dict:
    """Per offer, from the latest feature snapshot at or before it: engagement (log1p of app and web
    logins over 30 days) and, per product, 1 if its page was viewed in 30 days. 0 where unknown."""
    import pyarrow.parquet as pq

    wanted = {"logins_app_30d", "logins_web_30d", *(f"views_{a}_30d" for a in arms)}
    n = len(customers)
    query = pd.DataFrame({CUSTOMER_ID: customers.to_numpy(), "_at": when.to_numpy(), "_row": np.arange(n)})
    found = query.sort_values("_at")
    for path in sorted(paths.features.glob("*.parquet")):
        names = pq.read_schema(path).names
        columns = [c for c in names if c in wanted and c not in found.columns]
        if not columns or CUSTOMER_ID not in names or EVENT_TIMESTAMP not in names:
            continue
        table = pd.read_parquet(path, columns=[CUSTOMER_ID, EVENT_TIMESTAMP, *columns])
        table["_at"] = pd.to_datetime(table[EVENT_TIMESTAMP], utc=True)
        table[CUSTOMER_ID] = table[CUSTOMER_ID].astype(str)
        found = pd.merge_asof(found, table.drop(columns=[EVENT_TIMESTAMP]).sort_values("_at"), on="_at",
                              by=CUSTOMER_ID, direction="backward")
    found = found.sort_values("_row")

    def column(name: str) -> np.ndarray:
        return np.nan_to_num(found[name].to_numpy(dtype=float)) if name in found.columns else np.zeros(n)

    engagement = np.log1p(np.clip(column("logins_app_30d") + column("logins_web_30d"), 0.0, None))
    views = {a: column(f"views_{a}_30d") > 0 for a in arms}
    viewed = [{a: float(views[a][i]) for a in arms if views[a][i]} for i in range(n)]
    return {"engagement": engagement, "viewed": viewed}


def log_history(path: Path, featuriser, max_weight: float = 1.0) -> History:
    """Rows of every answered offer in a decision log; with `max_weight` above 1, weighted by inverse
    propensity (clipped at `max_weight`, scaled to average 1).

    Raises:
        FileNotFoundError, EventLogError: not a decision log (`EventLogReader`).
        ValueError: `max_weight` below 1.
    """
    import json

    if not max_weight >= 1:
        raise ValueError(f"max_weight must be at least 1, got {max_weight}")
    with EventLogReader(path) as log:
        rewards = log.rewards(("rowid", "decision_id", "product_id", "reward"))
        contexts = log.decisions(("decision_id", "context"))
        offers = log.offers(("decision_id", "product_id", "propensity"))
    skipped: dict[str, int] = {}
    last = int(rewards["rowid"].max()) if len(rewards) else 0
    context = dict(zip(contexts["decision_id"], contexts["context"]))
    propensity = {(d, p): q for d, p, q in offers[["decision_id", "product_id", "propensity"]].itertuples(index=False)}
    rebuilt: dict[str, tuple[list[str], np.ndarray] | None] = {}
    x, reward, raw_weight = [], [], []
    for decision, arm, answer in rewards[["decision_id", "product_id", "reward"]].itertuples(index=False):
        if decision not in rebuilt:
            ctx = context.get(decision)
            rebuilt[decision] = featuriser.logged(ctx if isinstance(ctx, dict) else json.loads(ctx or "{}"))
        rows = rebuilt[decision]
        if rows is None or arm not in rows[0]:
            skipped["decision scored by another catalogue or layout"] = \
                skipped.get("decision scored by another catalogue or layout", 0) + 1
            continue
        x.append(rows[1][rows[0].index(arm)])
        reward.append(float(answer))
        q = propensity.get((decision, arm), math.nan)
        raw_weight.append(min(1.0 / q, max_weight) if 0 < q <= 1 else math.nan)
    weight = np.array(raw_weight, dtype=float)
    if np.isnan(weight).any():
        skipped["offers without a logged propensity (counted once)"] = int(np.isnan(weight).sum())
        weight[np.isnan(weight)] = 1.0
    if len(weight):
        weight *= len(weight) / weight.sum()
    x_arr = np.vstack(x) if x else np.zeros((0, featuriser.dim))
    return History(str(path), x_arr, np.array(reward, dtype=float), weight, skipped, last)


def warm_posterior(prior, histories: list[History], history_weight: float = 1.0):
    """The prior updated by every history at once (`Posterior.fit`), each answer counting as
    `history_weight` observations (below 1: the history informs the start but leaves the posterior
    open to what the service sees now)."""
    if not 0 < history_weight <= 1:
        raise ValueError(f"history_weight must be in (0, 1], got {history_weight}")
    rows = [h for h in histories if len(h.reward)]
    if not rows:
        return prior
    return prior.fit(np.vstack([h.x for h in rows]), np.concatenate([h.reward for h in rows]),
                     history_weight * np.concatenate([h.weight for h in rows]))


def warm_start(paths: Paths, offers: bool = True, logs: tuple[Path, ...] = (), max_weight: float = 1.0,
               force: bool = False, history_weight: float = 1.0) -> dict:
    """Learns the served policy's posterior from history and saves it in the work dir's event log.

    Args:
        offers: learn from `raw/offers.parquet` (skipped, and said so, if there is none).
        logs: decision logs to learn from (another deployment's, or this work dir's own).
        force: replace a posterior the policy has already saved (it has learnt online); by default
            that is refused, since the warm start would throw that learning away.
        history_weight: how many observations each past answer counts as, in (0, 1].

    Returns:
        {"policy", "sources": [History.summary()...], "observations", "accepted", "acceptance_before",
        "acceptance_after", "replay_from"}: the mean predicted acceptance of the history's rows under
        the prior and under the warm posterior, and the reward rowid of the work dir's own log the
        service goes on learning after.

    Raises:
        LookupError: nothing to learn from, or a saved posterior exists and `force` is not set.
        ValueError: a source is malformed (the message names file, column and value).
    """
    from nextbest.config import load_bandit, load_catalogue
    from nextbest.serving.bandit import Featuriser, Posterior, sigmoid
    from nextbest.serving.eventlog import EventLog

    catalogue = load_catalogue()
    cfg = load_bandit(catalogue=catalogue)
    featuriser = Featuriser.for_catalogue(catalogue, cfg.actions)
    own = paths.events_db.resolve()
    if paths.events_db.exists() and not force:
        with EventLogReader(paths.events_db) as log:
            saved = log.policy(cfg.policy, featuriser.signature)
        if saved is not None:
            raise LookupError(f"{paths.events_db}: policy {cfg.policy!r} has already learnt from "
                              f"{saved.n_updates:,} rewards; --force replaces what it learnt")
    histories: list[History] = []
    notes: list[str] = []
    if offers:
        path = paths.raw / "offers.parquet"
        if path.exists():
            histories.append(offer_history(paths, featuriser, pd.read_parquet(path)))
        else:
            notes.append(f"{path}: no offer history")
    replay_from = 0
    for log_path in logs:
        history = log_history(Path(log_path), featuriser, max_weight)
        histories.append(history)
        if Path(log_path).resolve() == own:
            replay_from = history.last_reward_rowid  # already learnt: not replayed on top
    if not any(len(h.reward) for h in histories):
        raise LookupError("nothing to learn from: " + ("; ".join(notes) if notes else "no answered offer in "
                                                       + ", ".join(h.source for h in histories)))
    prior = Posterior.from_config(featuriser, cfg.prior, math.log(cfg.cold_start.page_boost))
    posterior = warm_posterior(prior, histories, history_weight)
    x = np.vstack([h.x for h in histories])
    events = EventLog(paths.events_db)
    try:
        events.save_policy(cfg.policy, featuriser.signature, posterior.n_updates, replay_from, posterior.mean,
                           posterior.cov)
    finally:
        events.close()
    return {"policy": cfg.policy, "sources": [h.summary() for h in histories], "notes": notes,
            "observations": int(sum(len(h.reward) for h in histories)),
            "accepted": int(sum(h.reward.sum() for h in histories)),
            "acceptance_before": float(sigmoid(x @ prior.mean).mean()),
            "acceptance_after": float(sigmoid(x @ posterior.mean).mean()), "replay_from": replay_from}
