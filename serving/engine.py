"""The decision core, without HTTP: what `/recommend`, `/feedback` and `/events` do.

`nextbest.serving.service` wraps one `DecisionEngine` per BentoML worker; the bandit simulator
(`nextbest simulate`) drives the same engine in-process, so simulated decisions take exactly the
production path: online features -> models -> rules and control groups -> candidates valued by
margin and levers -> the bandit's choice -> the decision, with every candidate, propensity and
suppression, committed to the event log before the answer. The models are numpy scorers
(`nextbest.serving.models`: serving needs no torch); the online store's reads and real-time pushes
are `nextbest.serving.online`.
"""

from __future__ import annotations

import concurrent.futures
import gc
import logging
import math
import secrets
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from nextbest.config import load_bandit, load_catalogue, load_rules
from nextbest.constants import CHURN_MODEL_NAME, CUSTOMER_ID, NBP_MODEL_NAME
from nextbest.eventlog import AMOUNT_EVENTS, CONSENT_CHANGES, PRODUCT_EVENTS
from nextbest.serving import fallback as fb
from nextbest.serving.bandit import Context, Featuriser, OnlinePolicy
from nextbest.serving.decide import (Candidate, History, Profile, Suppression, apply_holdout, apply_rules, candidates,
                                     holdout_groups, holdout_unit, make_profile)
from nextbest.serving.eventlog import Contradiction, EventLog
from nextbest.serving.models import LoadedModel
from nextbest.serving.online import REALTIME_EVENT_FIELDS, StoreLink, push_realtime
from nextbest.serving.privacy import load_key, pseudonymise, read_key
from nextbest.settings import Paths

log = logging.getLogger("nextbest.serving")

DAY = 86400.0


class RequestError(Exception):
    """An answer other than 200, with a message for the caller (no stack trace, nothing logged)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Prepared:
    """Everything about one decision before the policy chooses."""

    customer_id: str
    pseudonym: str
    channel: str
    k: int
    when: datetime
    profile: Profile
    candidates: list[Candidate]
    request: Context
    suppressed: list[Suppression]
    blocked: str | None
    degraded: str | None
    churn_risk: float | None
    groups: dict[str, str]
    features: dict | None
    page: str | None = None
    event: str | None = None
    trigger: str | None = None


def as_utc(ts: datetime | None) -> datetime:
    """The decision time: `ts` (naive means UTC), else now."""
    if ts is None:
        return datetime.now(timezone.utc)
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)


def feature_sample_share() -> float:
    """`serving.feature_sample_share` of configs/monitoring.yaml (validated): the share of decisions
    whose features are logged."""
    from nextbest.config import load_monitoring

    return load_monitoring().serving.feature_sample_share


class DecisionEngine:
    """One decision maker: models, rules, policy, event log and the online store.

    Args:
        paths: the work directory.
        features: a reader `customer_id -> feature dict or None` that replaces the online store
            (tests, simulations); None reads the Feast online store of the work directory.
        durable: fsync every logged decision (production); False for simulations.
        stream: the policy's random stream (one per serving worker).
        readonly: for `preview` only (the console): the work directory is read, never written (the
            log opened read-only, the policy's state not saved, a stale fallback table rebuilt in a
            temporary folder, no key created); `recommend`, `feedback` and `event` fail.
    """

    def __init__(self, paths: Paths, features: Callable[[str], dict | None] | None = None, durable: bool = True,
                 stream: int = 0, eventlog: EventLog | None = None, readonly: bool = False):
        self.paths = paths
        self.readonly = readonly
        self.catalogue = load_catalogue()
        self.products = self.catalogue.products
        self.policy_cfg = load_bandit(catalogue=self.catalogue)
        self.rules = load_rules(catalogue=self.catalogue, bandit=self.policy_cfg)
        self.eventlog = eventlog or EventLog(paths.events_db, durable=durable, readonly=readonly)
        # Read-only with no key yet: nothing was logged under any pseudonym, so any key finds the same nothing.
        self.key = (read_key(paths.root) or secrets.token_hex(32).encode()) if readonly else load_key(paths.root)
        self._scratch: tempfile.TemporaryDirectory | None = None
        self.sample_share = feature_sample_share()
        self._reader = features
        self._stream = stream
        self.link: StoreLink | None = None
        self.fallback: fb.Fallback | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="online-store")
        self._pusher = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="online-push")
        self.ready = False
        self.error: str | None = None

    # -- loading ---------------------------------------------------------------------------------

    def load(self) -> None:
        """Loads models, the fallback table, the policy and the online store; errors land in `error`."""
        try:
            scratch = None
            if self.readonly:
                uri = self.paths.mlflow_uri  # MLflow would create a missing SQLite registry
                if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
                    raise LookupError(f"no model registry yet ({uri}): train the models first")
                self._scratch = self._scratch or tempfile.TemporaryDirectory(prefix="nextbest-preview-")
                scratch = Path(self._scratch.name)
            self.nbp = LoadedModel(NBP_MODEL_NAME, self.paths, scratch)
            self.churn = LoadedModel(CHURN_MODEL_NAME, self.paths, scratch)
            for model in (self.nbp, self.churn):
                changed = model.meta.catalogue_change(self.catalogue.ids)
                if changed:
                    raise ValueError(f"model '{model.registered.name}' v{model.registered.version} was {changed} "
                                     f"(nextbest train {model.registered.name})")
            db = self.paths.root / "fallback.db"
            if fb.is_stale(db, self.paths.features):
                if self.readonly:
                    db = Path(self._scratch.name) / "fallback.db"
                rows = fb.build(db, self.paths.features, self.catalogue, self.rules, self.key)
                log.info("fallback table rebuilt: %d customers", rows)
            self.fallback = fb.Fallback(db)
            # Each worker process draws its own random stream; all learn the same rewards in log order.
            self.policy = OnlinePolicy(Featuriser.for_catalogue(self.catalogue, self.policy_cfg.actions),
                                       self.policy_cfg, self.eventlog,
                                       viewed_weight=math.log(self.policy_cfg.cold_start.page_boost),
                                       stream=self._stream)
        except Exception as exc:  # noqa: BLE001 - any load failure must surface on /readyz, not kill the server
            error = f"{type(exc).__name__}: {exc}"
            if error != self.error:  # a load retried while waiting for models says it once
                log.error("loading failed: %s", error)
            self.error = error
            return
        if self._reader is None:
            self.link = StoreLink(self.paths, [self.nbp.meta.feature_service, self.churn.meta.feature_service])
            self.link.connect()
            self.link.watch()
        if not self.readonly:
            # Everything loaded so far (models, Feast, MLflow, pandas) lives as long as the process:
            # freezing it keeps the garbage collector's full passes from walking it during requests.
            gc.collect()
            gc.freeze()
        self.ready = True
        log.info("ready: nbp v%s, churn v%s, policy %s after %d updates (%d replayed)",
                 self.nbp.registered.version, self.churn.registered.version, self.policy.name,
                 self.policy.posterior.n_updates, self.policy.replayed)

    def require_writable(self) -> None:
        if self.readonly:
            raise RuntimeError("a read-only decision engine only previews decisions")

    def require_ready(self) -> None:
        if not self.ready:
            raise RequestError(503, f"not ready: {self.error or 'models and features are still loading'}")

    def online_features(self, customer_id: str) -> tuple[dict | None, str | None]:
        """The customer's online features within the budget: (features or None if unknown, degraded reason)."""
        if self._reader is not None:
            return self._reader(customer_id), None
        link = self.link
        store, read = (link.store, link.read) if link is not None else (None, None)
        if store is None or read is None:
            return None, f"online store unavailable ({link.error if link is not None else 'not loaded'})"

        def fetch():
            return {CUSTOMER_ID: customer_id, **(read(customer_id) or {})}

        future = self._pool.submit(fetch)
        try:
            features = future.result(timeout=self.policy_cfg.online_budget_ms / 1000)
        except concurrent.futures.TimeoutError:
            return None, f"online store slower than {self.policy_cfg.online_budget_ms:g} ms"
        except Exception as exc:  # noqa: BLE001 - any store failure means a degraded answer, never a 500
            log.warning("online store failed: %s", type(exc).__name__)
            return None, f"online store failed ({type(exc).__name__})"
        if all(v is None for k, v in features.items() if k != CUSTOMER_ID):
            return None, None
        return features, None

    # -- decisions -------------------------------------------------------------------------------

    def prepare(self, customer_id: str, channel: str = "mobile_app", k: int = 3, context: dict | None = None,
                categories: list[str] | None = None, trigger: str | None = None) -> Prepared:
        """Everything before the policy's choice: features, profile, rules, control groups, candidates."""
        self.require_ready()
        context = context or {}
        when = as_utc(context.get("timestamp"))
        now = when.timestamp()
        page = context.get("page")
        pseudonym = pseudonymise(customer_id, self.key)
        features, degraded = self.online_features(customer_id)
        if features is not None:
            fields = fb.profile_fields(features, self.catalogue, self.rules)
        else:
            # None: the bank does not know this customer, a prospect. A customer the fallback
            # table knows but the online store does not means the store lost data: degrade.
            fields = self.fallback.profile(pseudonym)
            if fields is not None and degraded is None:
                degraded = "online store has no features for a known customer"
        profile = make_profile(fields, self.eventlog.customer_events(pseudonym), now, self.fallback.snapshot)
        if page in self.catalogue.ids:
            profile = replace(profile, viewed=profile.viewed | {page})
        contacts, rejected = self.eventlog.history(pseudonym, now - 7 * DAY,
                                                   now - self.rules.rejection_cooldown_days * DAY)
        history = History(contacts, frozenset(rejected))
        allowed, suppressed, blocked, cooldown = apply_rules(self.rules, self.catalogue, profile, history, channel)
        groups = holdout_groups(self.policy_cfg.holdout, customer_id)
        if blocked is None:
            allowed, held_out, blocked = apply_holdout(self.policy_cfg.holdout, groups, allowed)
            suppressed += held_out
        if not profile.known:
            entry = set(self.policy_cfg.cold_start.entry_products)
            suppressed += [Suppression(p, "cold_start_entry_products") for p in allowed if p not in entry]
            allowed = [p for p in allowed if p in entry]
        if categories is not None:
            by_id = self.catalogue.by_id()
            allowed = [p for p in allowed if by_id[p].category in categories]
        probs, churn_risk = self._probabilities(features, profile, degraded)
        cands = candidates(self.catalogue, self.policy_cfg, self.rules, profile, allowed, probs, churn_risk,
                           cooldown, history, blocked, actions=categories is None)
        request = Context(channel, when.hour, when.weekday(), profile.engagement)
        return Prepared(customer_id, pseudonym, channel, k, when, profile, cands, request, suppressed, blocked,
                        degraded, churn_risk, groups, features, page, context.get("event"), trigger)

    def recommend(self, customer_id: str, channel: str = "mobile_app", k: int = 3, context: dict | None = None,
                  explain: bool = False, categories: list[str] | None = None, trigger: str | None = None) -> dict:
        """The `/recommend` answer: the policy ranks the prepared candidates; the decision is logged first."""
        started = time.perf_counter()
        self.require_writable()
        prep = self.prepare(customer_id, channel, k, context, categories, trigger)
        degraded = prep.degraded
        self.policy.learn()  # rewards another worker recorded since the last decision
        choice = self.policy.choose(prep.candidates, prep.request, k, explore_share=0.0 if degraded else None)
        offers = [_offer(prep.candidates[i], r + 1, choice, i, channel, explain, prop, explored)
                  for r, (i, prop, explored) in enumerate(zip(choice.order, choice.propensity, choice.explored))]
        decision_id = uuid.uuid4().hex
        versions = {NBP_MODEL_NAME: self.nbp.registered.version, CHURN_MODEL_NAME: self.churn.registered.version}
        profile = prep.profile
        logged_features = None
        if prep.features is not None and holdout_unit("features", "sample", decision_id) < self.sample_share:
            logged_features = {f: v for f, v in prep.features.items() if f != CUSTOMER_ID}
        self.eventlog.log_decision(decision_id, prep.pseudonym, channel, k, [
            {key: o[key] for key in ("product_id", "rank", "score", "probability", "propensity", "explored")}
            for o in offers], versions, {
            "policy": self.policy.name, "exploring": choice.exploring, "degraded": degraded,
            "segment": profile.segment, "lifecycle": profile.lifecycle, "known": profile.known,
            "churn_risk": prep.churn_risk, "blocked": prep.blocked, "trigger": prep.trigger,
            "groups": prep.groups, "holdout": prep.blocked == "holdout:all",
            "request": {**prep.request.as_dict(), "page": prep.page, "event": prep.event, "at": prep.when.timestamp()},
            "candidates": [{"arm": c.arm, "base_prob": round(c.base_prob, 8), "value": round(c.value, 6),
                            "viewed": c.viewed} for c in prep.candidates],
            "suppressed": [s.__dict__ for s in prep.suppressed]}, features=logged_features, at=prep.when.timestamp())
        log.info("decision %s for %s on %s: %d offers%s", decision_id, prep.pseudonym, channel, len(offers),
                 " (degraded)" if degraded else "")
        answer = {
            "decision_id": decision_id,
            "customer_id": customer_id,
            "segment": profile.segment,
            "lifecycle": profile.lifecycle,
            "offers": offers,
            "model_versions": versions,
            "policy": {"name": self.policy.name, "explore_share": 0.0 if degraded else self.policy_cfg.explore_share,
                       "exploring": choice.exploring, "updates": self.policy.posterior.n_updates},
            "degraded": degraded is not None,
            "churn_risk": None if prep.churn_risk is None else round(prep.churn_risk, 6),
            "suppressed_by": prep.blocked,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        if explain:
            answer["explanation"] = {"degraded_reason": degraded, "rules_version": self.rules.version,
                                     "groups": prep.groups, "suppressed": [s.__dict__ for s in prep.suppressed]}
        return answer

    def preview(self, customer_id: str, channel: str = "mobile_app", context: dict | None = None) -> dict:
        """What `/recommend` would rank for the customer on `channel` now, with nothing logged and nothing
        explored: every offer the rules allow, in the policy's posterior-mean order, each with what
        its score rests on; every offer the rules or control groups suppress, with the rule."""
        prep = self.prepare(customer_id, channel, max(len(self.catalogue.ids), 1), context)
        self.policy.learn()
        n = len(prep.candidates)
        choice = self.policy.choose(prep.candidates, prep.request, n, explore_share=0.0)
        offers = [_offer(prep.candidates[i], r + 1, choice, i, channel, True, prop, False)
                  for r, (i, prop) in enumerate(zip(choice.order, choice.propensity))]
        for offer, i in zip(offers, choice.order):
            offer["base_probability"] = round(prep.candidates[i].base_prob, 6)
            offer["value"] = round(prep.candidates[i].value, 2)
            offer["viewed"] = prep.candidates[i].viewed
        profile = prep.profile
        return {"channel": channel, "at": prep.when.isoformat(), "segment": profile.segment,
                "lifecycle": profile.lifecycle, "known": profile.known, "offers": offers,
                "suppressed": [s.__dict__ for s in prep.suppressed], "suppressed_by": prep.blocked,
                "degraded": prep.degraded, "churn_risk": prep.churn_risk, "groups": prep.groups,
                "policy": {"name": self.policy.name, "updates": self.policy.posterior.n_updates,
                           "arbitration": self.policy_cfg.arbitration},
                "model_versions": {NBP_MODEL_NAME: self.nbp.registered.version,
                                   CHURN_MODEL_NAME: self.churn.registered.version}}

    def _probabilities(self, features: dict | None, profile: Profile,
                       degraded: str | None) -> tuple[dict, float | None]:
        """P(acquire) per product (model, else segment popularity, else cold-start priors) and churn risk."""
        if features is not None:
            scored = dict(zip(self.nbp.meta.outputs, self.nbp.predict(features).tolist()))
            probs = {p: scored[p] for p in self.catalogue.ids}  # by name: load() checked the model scores each
            return probs, float(self.churn.predict(features)[0])
        if profile.known:  # degraded: the segment's recent acquisition rates
            return dict(self.fallback.rates(profile.segment)), None
        cold = self.policy_cfg.cold_start.acceptance
        floor = min(cold.values(), default=0.01)
        return {p: cold.get(p, floor) for p in self.catalogue.ids}, None

    # -- feedback and events ---------------------------------------------------------------------

    def feedback(self, decision_id: str, product_id: str, event: str, value: float | None = None,
                 timestamp: datetime | None = None) -> dict:
        """Records the outcome of an offer (idempotent); a first reward updates the policy at once."""
        self.require_writable()
        decision = self.eventlog.get_decision(decision_id)
        if decision is None:
            raise RequestError(404, f"unknown decision_id {decision_id!r}")
        offered = {o["product_id"] for o in decision.offers}
        if product_id not in offered:
            raise RequestError(400, f"product_id {product_id!r} was not offered in decision {decision_id!r} "
                                    f"(offered: {sorted(offered)})")
        at = None if timestamp is None else as_utc(timestamp).timestamp()
        try:
            recorded, reward = self.eventlog.log_feedback(decision_id, product_id, event, value, at)
        except Contradiction as exc:
            raise RequestError(409, str(exc)) from None
        if reward is not None and self.ready:
            self.policy.learn()
        return {"decision_id": decision_id, "product_id": product_id, "event": event, "recorded": recorded,
                "duplicate": not recorded, "reward": reward}

    def event(self, customer_id: str, event: str, event_id: str | None = None, product_id: str | None = None,
              amount: float | None = None, consent: str | None = None, timestamp: datetime | None = None,
              value: float | None = None) -> dict:
        """A real-time customer event: logged (idempotent by event_id), pushed to the online store's
        short-term context, and perhaps a triggered next-best action."""
        self.require_writable()
        by_id = self.catalogue.by_id()
        if event in PRODUCT_EVENTS:
            if product_id is None:
                raise RequestError(400, f"event {event!r} needs product_id")
            if product_id not in by_id:
                raise RequestError(400, f"unknown product_id {product_id!r}")
        if event in AMOUNT_EVENTS and amount is None:
            raise RequestError(400, f"event {event!r} needs amount")
        if event in CONSENT_CHANGES and consent is None:
            raise RequestError(400, f"event {event!r} needs consent (email, push, sms or call)")
        when = as_utc(timestamp)
        payload = {k: v for k, v in (("product_id", product_id), ("amount", amount), ("consent", consent),
                                     ("value", value)) if v is not None}
        pseudonym = pseudonymise(customer_id, self.key)
        event_id = event_id or uuid.uuid4().hex
        recorded = self.eventlog.log_customer_event(event_id, pseudonym, event, payload, when.timestamp())
        # Feast's push costs ~30-50 ms: it runs behind the answer, in order, on one thread.
        store = self.link.store if self.link is not None else None
        queued = recorded and event in REALTIME_EVENT_FIELDS and store is not None
        if queued:
            self._pusher.submit(push_realtime, store, customer_id, event, payload, when.timestamp())
        triggered = None
        trigger = self.policy_cfg.triggers.get(event)
        if recorded and trigger is not None and (amount or 0) >= trigger.min_amount and self.ready:
            triggered = self.recommend(customer_id, trigger.channel, 1, {"event": event, "timestamp": timestamp},
                                       False, categories=list(trigger.categories), trigger=event)
        return {"event_id": event_id, "event": event, "recorded": recorded, "duplicate": not recorded,
                "online_store_queued": queued, "triggered": triggered}


def _offer(cand: Candidate, rank: int, choice, i: int, channel: str, explain: bool, propensity: float,
           explored: bool) -> dict:
    offer = {"product_id": cand.arm, "name": cand.name, "rank": rank,
             "score": round(float(choice.expected_value[i]), 6),
             "probability": round(float(choice.probability[i]), 6),
             "expected_value": round(float(choice.expected_value[i]), 4),
             "propensity": round(max(propensity, 1e-6), 6), "explored": explored, "channel": channel}
    if explain:
        offer["reasons"] = [f"base probability {cand.base_prob:.4g}", f"value {cand.value:.4g} EUR if accepted",
                            *(["customer viewed this product recently"] if cand.viewed else []),
                            "explored: ranked by a posterior sample" if explored else
                            "ranked by expected value (posterior mean)"]
    return offer
