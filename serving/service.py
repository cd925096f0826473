"""The BentoML decision service: `POST /recommend`, `POST /feedback`, `POST /events`, health and readiness.

Run it with `nextbest serve --workdir DIR` (which calls `bentoml serve serving.service:NextBest`).
The work directory comes from `$NEXTBEST_HOME`. Models (MLflow alias `champion`), the Feast store,
the fallback table and the bandit's state load in a background thread: `/healthz` answers at once,
`/readyz` only once the models are loaded, and `/recommend` answers 503 with the reason until then.

A decision: online features (Feast) -> rules (configs/rules.yaml) -> candidates valued by margin
and levers -> the bandit ranks them (configs/bandit.yaml) -> the decision with every candidate,
propensity and suppression is committed to the event log -> the answer. If the online store fails
or is slower than its budget, the answer comes from segment popularity with `degraded: true`;
the rules, opt-out and consent included, hold on every path.
"""

from __future__ import annotations

import concurrent.futures
import hmac
import logging
import math
import os
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Annotated, Literal

import bentoml
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from nextbest.config import load_bandit, load_catalogue, load_rules
from nextbest.constants import (CHURN_MODEL_NAME, CUSTOMER_ID, DEFAULT_K, EVENT_TIMESTAMP, MAX_K, NBP_MODEL_NAME,
                                REALTIME_FEATURES, REALTIME_PUSH_SOURCE, REALTIME_VIEW)
from nextbest.settings import Paths
from serving import fallback as fb
from serving.bandit import Context, OnlinePolicy
from serving.decide import Candidate, History, Profile, Suppression, apply_rules, candidates, make_profile
from serving.eventlog import EventLog
from serving.privacy import load_key, pseudonymise

log = logging.getLogger("nextbest.serving")

Channel = Literal["mobile_app", "web", "email", "push", "sms", "branch", "call_center"]
FeedbackEvent = Literal["impression", "click", "accept", "reject", "convert", "dismiss"]
CustomerEvent = Literal["salary_received", "large_deposit", "loan_disbursed", "product_page_view", "opt_out",
                        "opt_in", "consent_granted", "consent_withdrawn"]
Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]

# Which short-term context fields an event sets: (value field, payload key, time field).
REALTIME_EVENT_FIELDS = {
    "salary_received": ("last_salary_amount", "amount", "last_salary_at"),
    "large_deposit": ("last_deposit_amount", "amount", "last_deposit_at"),
    "loan_disbursed": ("last_loan_product", "product_id", "last_loan_at"),
    "product_page_view": ("last_page_view_product", "product_id", "last_page_view_at"),
}
API_KEY_ENV = "NEXTBEST_API_KEY"
API_KEY_HEADER = "x-api-key"
MAX_BODY_BYTES = 16 * 1024
PROTECTED = ("/recommend", "/feedback", "/events")
DAY = 86400.0


class RequestContext(BaseModel):
    """Optional request context: the page the customer is on, what triggered the call, when."""

    model_config = ConfigDict(extra="forbid")

    page: Annotated[str, Field(max_length=64)] | None = None
    event: Annotated[str, Field(max_length=64)] | None = None
    timestamp: datetime | None = None


class RequestError(Exception):
    """An answer other than 200, with a message for the caller (no stack trace, nothing logged)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _NoInputInLogs(logging.Filter):
    """A request that fails validation is answered 400 naming the field; BentoML would also log its
    traceback, which quotes the request's values (customer ids among them). Keep one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        exc = record.exc_info[0] if record.exc_info else None
        if exc is not None and issubclass(exc, ValidationError):
            fields = sorted({".".join(map(str, e["loc"])) for e in record.exc_info[1].errors()})
            record.msg, record.args = "invalid request on %s [%s]: fields %s (answered 400)", (*record.args[:2], fields)
            record.exc_info, record.exc_text = None, None
        return True


class Guard:
    """ASGI middleware: API key (when `NEXTBEST_API_KEY` is set), JSON only and a size limit on the APIs.

    All answer before BentoML parses the body: 401 without the right `x-api-key` header, 415 for a
    body that is not JSON (BentoML would try form parsing and fail with a 500), 413 for a body over
    MAX_BODY_BYTES (declared or streamed).
    """

    def __init__(self, app, max_body: int = MAX_BODY_BYTES):
        self.app = app
        self.max_body = max_body
        key = os.environ.get(API_KEY_ENV, "")
        self.key = key.encode() if key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") not in PROTECTED:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.key is not None and not hmac.compare_digest(headers.get(API_KEY_HEADER.encode(), b""), self.key):
            return await _reject(send, 401, f"missing or wrong {API_KEY_HEADER} header")
        content_type = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if content_type != b"application/json":
            return await _reject(send, 415, f"Content-Type must be application/json, got {content_type.decode(errors='replace')!r}")
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            return await _reject(send, 413, f"request body over {self.max_body} bytes")
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise _TooLarge
            return message

        try:
            return await self.app(scope, limited, send)
        except _TooLarge:
            return await _reject(send, 413, f"request body over {self.max_body} bytes")


class _TooLarge(Exception):
    pass


async def _reject(send, status: int, message: str) -> None:
    import json

    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _answer(ctx: bentoml.Context, fn, *args) -> dict:
    """Runs a handler; a RequestError becomes `{"error": message}` with its status code."""
    try:
        return fn(*args)
    except RequestError as exc:
        ctx.response.status_code = exc.status
        return {"error": str(exc)}


class LoadedModel:
    def __init__(self, name: str, paths: Paths):
        from training.models import from_checkpoint
        from training.registry import fetch_alias

        self.registered = fetch_alias(paths, name)
        self.model, self.meta = from_checkpoint(self.registered.local_dir)

    def predict(self, row: pd.DataFrame | dict[str, list]) -> np.ndarray:
        from training.models import predict_proba

        return predict_proba(self.model, self.meta, row)[0]


def _when(context: RequestContext | None) -> datetime:
    ts = context.timestamp if context is not None and context.timestamp is not None else None
    if ts is None:
        return datetime.now(timezone.utc)
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)


# Beyond 32 requests in flight, answer 429 at once rather than queue work the caller gave up on.
@bentoml.service(name="nextbest", workers=1, traffic={"timeout": 30, "max_concurrency": 32})
class NextBest:
    def __init__(self) -> None:
        logging.getLogger("bentoml._internal.server.http_app").addFilter(_NoInputInLogs())
        self.paths = Paths.from_workdir()
        self.catalogue = load_catalogue()
        self.products = self.catalogue.products
        self.policy_cfg = load_bandit(catalogue=self.catalogue)
        self.rules = load_rules(catalogue=self.catalogue, bandit=self.policy_cfg)
        self.eventlog = EventLog(self.paths.events_db)
        self.key = load_key(self.paths.root)
        self.store = None
        self._fast_read = None
        self.fallback: fb.Fallback | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="online-store")
        self._pusher = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="online-push")
        self._ready = False
        self._error: str | None = None
        self._store_error: str | None = None
        threading.Thread(target=self._load, name="nextbest-loader", daemon=True).start()

    # -- loading ---------------------------------------------------------------------------------

    def _load(self) -> None:
        import torch

        # One small MLP per request: torch's intra-op threads only contend with the API threads
        # (measured: 2 threads cost twice the CPU per decision of 1).
        torch.set_num_threads(1)
        try:
            self.nbp = LoadedModel(NBP_MODEL_NAME, self.paths)
            self.churn = LoadedModel(CHURN_MODEL_NAME, self.paths)
            db = self.paths.root / "fallback.db"
            if fb.is_stale(db, self.paths.features):
                rows = fb.build(db, self.paths.features, self.catalogue, self.rules, self.key)
                log.info("fallback table rebuilt: %d customers", rows)
            self.fallback = fb.Fallback(db)
            arms = self.catalogue.ids + list(self.policy_cfg.actions)
            # Each worker process draws its own random stream; all learn the same rewards in log order.
            worker = bentoml.server_context.worker_index or 1
            self.policy = OnlinePolicy(arms, self.policy_cfg, self.eventlog,
                                       viewed_weight=math.log(self.policy_cfg.cold_start.page_boost),
                                       stream=worker - 1)
        except Exception as exc:  # noqa: BLE001 - any load failure must surface on /readyz, not kill the server
            self._error = f"{type(exc).__name__}: {exc}"
            log.error("loading failed: %s", self._error)
            return
        try:
            from feature_repo.store import open_store

            self.store = open_store(self.paths)
            self.nbp_service = self.store.get_feature_service(self.nbp.meta.feature_service)
            # The first read builds Feast's lazy state (~100 ms); pay it here, not in a request's budget.
            self.store.get_online_features(features=self.nbp_service, entity_rows=[{CUSTOMER_ID: "__warm_up__"}])
            self._fast_read = _fast_reader(self.store, self.nbp_service)
        except Exception as exc:  # noqa: BLE001 - without the online store, answers are degraded, not refused
            self._store_error = f"{type(exc).__name__}: {exc}"
            log.error("online store unavailable, answering degraded: %s", self._store_error)
        self._ready = True
        log.info("ready: nbp v%s, churn v%s, policy %s after %d updates (%d replayed)",
                 self.nbp.registered.version, self.churn.registered.version, self.policy.name,
                 self.policy.posterior.n_updates, self.policy.replayed)

    def __is_ready__(self) -> bool:
        return self._ready

    def _require_ready(self) -> None:
        if not self._ready:
            raise RequestError(503, f"not ready: {self._error or 'models and features are still loading'}")

    def _online_features(self, customer_id: str) -> tuple[dict | None, str | None]:
        """The customer's online features within the budget: (features or None if unknown, degraded reason)."""
        if self.store is None:
            return None, f"online store unavailable ({self._store_error})"

        def fetch():
            if self._fast_read is not None:
                values = self._fast_read(customer_id)
                return {CUSTOMER_ID: customer_id, **(values or {})}
            values = self.store.get_online_features(features=self.nbp_service,
                                                    entity_rows=[{CUSTOMER_ID: customer_id}]).to_dict()
            return {k: v[0] for k, v in values.items()}

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

    # -- /recommend ------------------------------------------------------------------------------

    @bentoml.api(route="/recommend")
    def recommend(
        self,
        ctx: bentoml.Context,
        customer_id: Identifier,
        channel: Channel = "mobile_app",
        k: Annotated[int, Field(ge=1, le=MAX_K)] = DEFAULT_K,
        context: RequestContext | None = None,
        explain: bool = False,
    ) -> dict:
        """Ranked offers for one customer on one channel, within the rules, with propensities."""
        return _answer(ctx, self._recommend, customer_id, channel, k, context, explain)

    def _recommend(self, customer_id: str, channel: str, k: int, context: RequestContext | None, explain: bool,
                   categories: list[str] | None = None, trigger: str | None = None) -> dict:
        started = time.perf_counter()
        self._require_ready()
        when = _when(context)
        now = when.timestamp()
        pseudonym = pseudonymise(customer_id, self.key)
        features, degraded = self._online_features(customer_id)
        if features is not None:
            fields = fb.profile_fields(features, self.catalogue, self.rules)
        else:
            # None: the bank does not know this customer, a prospect. A customer the fallback
            # table knows but the online store does not means the store lost data: degrade.
            fields = self.fallback.profile(pseudonym)
            if fields is not None and degraded is None:
                degraded = "online store has no features for a known customer"
        profile = make_profile(fields, self.eventlog.customer_events(pseudonym), now, self.fallback.snapshot)
        if context is not None and context.page in self.catalogue.ids:
            profile = _with_view(profile, context.page)
        contacts, rejected = self.eventlog.history(pseudonym, now - 7 * DAY, now - self.rules.rejection_cooldown_days * DAY)
        history = History(contacts, frozenset(rejected))
        allowed, suppressed, blocked, cooldown = apply_rules(self.rules, self.catalogue, profile, history, channel)
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
        self.policy.learn()  # rewards another worker recorded since the last decision
        choice = self.policy.choose(cands, request, k, explore_share=0.0 if degraded else None)
        offers = [_offer(cands[i], r + 1, choice, i, channel, explain, prop, explored)
                  for r, (i, prop, explored) in enumerate(zip(choice.order, choice.propensity, choice.explored))]
        decision_id = uuid.uuid4().hex
        versions = {NBP_MODEL_NAME: self.nbp.registered.version, CHURN_MODEL_NAME: self.churn.registered.version}
        self.eventlog.log_decision(decision_id, pseudonym, channel, k, [
            {key: o[key] for key in ("product_id", "rank", "score", "probability", "propensity", "explored")}
            for o in offers], versions, {
            "policy": self.policy.name, "exploring": choice.exploring, "degraded": degraded,
            "segment": profile.segment, "lifecycle": profile.lifecycle, "known": profile.known,
            "churn_risk": churn_risk, "blocked": blocked, "trigger": trigger,
            "request": {**request.as_dict(), "page": context.page if context else None,
                        "event": context.event if context else None, "at": now},
            "candidates": [{"arm": c.arm, "base_prob": round(c.base_prob, 8), "value": round(c.value, 6),
                            "viewed": c.viewed} for c in cands],
            "suppressed": [s.__dict__ for s in suppressed]})
        log.info("decision %s for %s on %s: %d offers%s", decision_id, pseudonym, channel, len(offers),
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
            "churn_risk": None if churn_risk is None else round(churn_risk, 6),
            "suppressed_by": blocked,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        if explain:
            answer["explanation"] = {"degraded_reason": degraded, "rules_version": self.rules.version,
                                     "suppressed": [s.__dict__ for s in suppressed]}
        return answer

    def _probabilities(self, features: dict | None, profile: Profile, degraded: str | None) -> tuple[dict, float | None]:
        """P(acquire) per product (model, else segment popularity, else cold-start priors) and churn risk."""
        if features is not None:
            row = {k: [v] for k, v in features.items()}
            probs = dict(zip(self.catalogue.ids, self.nbp.predict(row).tolist()))
            return probs, float(self.churn.predict(row)[0])
        if profile.known:  # degraded: the segment's recent acquisition rates
            return dict(self.fallback.rates(profile.segment)), None
        cold = self.policy_cfg.cold_start.acceptance
        floor = min(cold.values(), default=0.01)
        return {p: cold.get(p, floor) for p in self.catalogue.ids}, None

    # -- /feedback -------------------------------------------------------------------------------

    @bentoml.api(route="/feedback")
    def feedback(
        self,
        ctx: bentoml.Context,
        decision_id: Identifier,
        product_id: Identifier,
        event: FeedbackEvent,
        value: Annotated[float, Field(ge=-1e9, le=1e9)] | None = None,
        timestamp: datetime | None = None,
    ) -> dict:
        """Records the outcome of an offer; the same event for the same offer is counted once.

        The first accept/convert (reward 1) or reject/dismiss (reward 0) of an offer updates the
        policy at once; it may arrive days after the decision.
        """
        return _answer(ctx, self._feedback, decision_id, product_id, event, value, timestamp)

    def _feedback(self, decision_id: str, product_id: str, event: str, value: float | None,
                  timestamp: datetime | None) -> dict:
        decision = self.eventlog.get_decision(decision_id)
        if decision is None:
            raise RequestError(404, f"unknown decision_id {decision_id!r}")
        offered = {o["product_id"] for o in decision.offers}
        if product_id not in offered:
            raise RequestError(400, f"product_id {product_id!r} was not offered in decision {decision_id!r} "
                                    f"(offered: {sorted(offered)})")
        at = None if timestamp is None else (timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=timezone.utc)).timestamp()
        recorded, reward = self.eventlog.log_feedback(decision_id, product_id, event, value, at)
        if reward is not None and self._ready:
            self.policy.learn()
        return {"decision_id": decision_id, "product_id": product_id, "event": event, "recorded": recorded,
                "duplicate": not recorded, "reward": reward}

    # -- /events ---------------------------------------------------------------------------------

    @bentoml.api(route="/events")
    def events(
        self,
        ctx: bentoml.Context,
        customer_id: Identifier,
        event: CustomerEvent,
        event_id: Identifier | None = None,
        product_id: Identifier | None = None,
        amount: Annotated[float, Field(ge=0, le=1e12)] | None = None,
        consent: Literal["email", "push", "sms", "call"] | None = None,
        timestamp: datetime | None = None,
    ) -> dict:
        """A real-time customer event: updates the short-term context the rules and policy read, and
        may return a triggered next-best action (e.g. a deposit offer when a large salary lands)."""
        return _answer(ctx, self._event, customer_id, event, event_id, product_id, amount, consent, timestamp)

    def _event(self, customer_id: str, event: str, event_id: str | None, product_id: str | None,
               amount: float | None, consent: str | None, timestamp: datetime | None) -> dict:
        by_id = self.catalogue.by_id()
        if event in ("product_page_view", "loan_disbursed"):
            if product_id is None:
                raise RequestError(400, f"event {event!r} needs product_id")
            if product_id not in by_id:
                raise RequestError(400, f"unknown product_id {product_id!r}")
        if event in ("salary_received", "large_deposit") and amount is None:
            raise RequestError(400, f"event {event!r} needs amount")
        if event in ("consent_granted", "consent_withdrawn") and consent is None:
            raise RequestError(400, f"event {event!r} needs consent (email, push, sms or call)")
        when = _when(RequestContext(timestamp=timestamp))
        payload = {k: v for k, v in (("product_id", product_id), ("amount", amount), ("consent", consent)) if v is not None}
        pseudonym = pseudonymise(customer_id, self.key)
        event_id = event_id or uuid.uuid4().hex
        recorded = self.eventlog.log_customer_event(event_id, pseudonym, event, payload, when.timestamp())
        # Feast's push costs ~30-50 ms: it runs behind the answer, in order, on one thread.
        queued = recorded and event in REALTIME_EVENT_FIELDS and self.store is not None
        if queued:
            self._pusher.submit(self._push_realtime, customer_id, event, payload, when.timestamp())
        triggered = None
        trigger = self.policy_cfg.triggers.get(event)
        if recorded and trigger is not None and (amount or 0) >= trigger.min_amount and self._ready:
            triggered = self._recommend(customer_id, trigger.channel, 1, RequestContext(event=event, timestamp=timestamp),
                                        False, categories=list(trigger.categories), trigger=event)
        return {"event_id": event_id, "event": event, "recorded": recorded, "duplicate": not recorded,
                "online_store_queued": queued, "triggered": triggered}

    def _push_realtime(self, customer_id: str, event: str, payload: dict, at: float) -> bool:
        """Writes the event into the customer's short-term context in the online store (Feast push).

        The event log stays the source the rules read, so a failed push only costs other
        readers of the online store their freshness (it is logged, without the customer id).
        """
        field = REALTIME_EVENT_FIELDS[event]
        try:
            from feast.data_source import PushMode

            refs = [f"{REALTIME_VIEW}:{n}" for n in REALTIME_FEATURES]
            current = self.store.get_online_features(features=refs, entity_rows=[{CUSTOMER_ID: customer_id}]).to_dict()
            row = {n: current[n][0] for n in REALTIME_FEATURES}
            value_field, key, time_field = field
            row[value_field], row[time_field] = payload[key], int(at)
            frame = pd.DataFrame([{CUSTOMER_ID: customer_id, EVENT_TIMESTAMP: pd.Timestamp(at, unit="s", tz="UTC"),
                                   **row}])
            self.store.push(REALTIME_PUSH_SOURCE, frame, to=PushMode.ONLINE)
            return True
        except Exception as exc:  # noqa: BLE001 - the event is logged; the online copy is best effort
            log.warning("short-term context not written to the online store: %s", type(exc).__name__)
            return False


NextBest.add_asgi_middleware(Guard)


def _fast_reader(store, service):
    """A one-customer reader of the feature service straight from our SQLite online store, or None
    for any other store (Redis is read through Feast's `get_online_features`)."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from feature_repo.online_store import RowSqliteOnlineStore

    online = store._get_provider().online_store
    if not isinstance(online, RowSqliteOnlineStore):
        return None
    tables = [(store.get_feature_view(p.name), [f.name for f in p.features]) for p in service.feature_view_projections]
    config = store.config

    def read(customer_id: str) -> dict | None:
        return online.read_python(config, tables, EntityKey(join_keys=[CUSTOMER_ID],
                                                            entity_values=[Value(string_val=customer_id)]))

    return read


def _with_view(profile: Profile, product_id: str) -> Profile:
    from dataclasses import replace

    return replace(profile, viewed=profile.viewed | {product_id})


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
