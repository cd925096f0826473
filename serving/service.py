"""The BentoML decision service: `POST /recommend`, `POST /feedback`, health and readiness.

Run it with `nextbest serve --workdir DIR` (which calls `bentoml serve serving.service:NextBest`).
The work directory comes from `$NEXTBEST_HOME`. Models (MLflow alias `champion`) and the Feast
store load in a background thread: `/healthz` answers at once, `/readyz` only once both are
loaded, and `/recommend` answers 503 with the reason if loading failed.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Annotated, Literal

import bentoml
import numpy as np
import pandas as pd
from pydantic import Field

from features.build import POLICY_FEATURES
from nextbest.config import load_catalogue
from nextbest.constants import (CHURN_MODEL_NAME, CUSTOMER_ID, DEFAULT_K, MAX_K, NBP_MODEL_NAME)
from nextbest.settings import Paths
from serving.decide import contact_allowed, eligible_products, rank_offers
from serving.eventlog import EventLog
from serving.privacy import load_key, pseudonymise

log = logging.getLogger("nextbest.serving")

Channel = Literal["mobile_app", "web", "email", "push", "sms", "branch", "call_center"]
FeedbackEvent = Literal["impression", "click", "accept", "reject", "convert", "dismiss"]


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

    def predict(self, row: pd.DataFrame) -> np.ndarray:
        from training.models import predict_proba

        return predict_proba(self.model, self.meta, row)[0]


@bentoml.service(name="nextbest", workers=1, traffic={"timeout": 30})
class NextBest:
    def __init__(self) -> None:
        logging.getLogger("bentoml._internal.server.http_app").addFilter(_NoInputInLogs())
        self.paths = Paths.from_workdir()
        self.catalogue = load_catalogue()
        self.products = self.catalogue.products
        self.events = EventLog(self.paths.events_db)
        self.key = load_key(self.paths.root)
        self._ready = False
        self._error: str | None = None
        threading.Thread(target=self._load, name="nextbest-loader", daemon=True).start()

    def _load(self) -> None:
        try:
            from feature_repo.store import open_store

            self.nbp = LoadedModel(NBP_MODEL_NAME, self.paths)
            self.churn = LoadedModel(CHURN_MODEL_NAME, self.paths)
            self.store = open_store(self.paths)
            self.nbp_service = self.store.get_feature_service(self.nbp.meta.feature_service)
            self.churn_features = set(self.churn.meta.preprocessor.numeric + self.churn.meta.preprocessor.categorical)
            self._ready = True
            log.info("ready: nbp v%s, churn v%s", self.nbp.registered.version, self.churn.registered.version)
        except Exception as exc:  # noqa: BLE001 - any load failure must surface on /readyz, not kill the server
            self._error = f"{type(exc).__name__}: {exc}"
            log.error("loading failed: %s", self._error)

    def __is_ready__(self) -> bool:
        return self._ready

    def _require_ready(self) -> None:
        if not self._ready:
            raise RequestError(503, f"not ready: {self._error or 'models and features are still loading'}")

    def _online_features(self, customer_id: str) -> dict:
        values = self.store.get_online_features(features=self.nbp_service,
                                                entity_rows=[{CUSTOMER_ID: customer_id}]).to_dict()
        return {k: v[0] for k, v in values.items()}

    @bentoml.api(route="/recommend")
    def recommend(
        self,
        ctx: bentoml.Context,
        customer_id: Annotated[str, Field(min_length=1, max_length=64)],
        channel: Channel = "mobile_app",
        k: Annotated[int, Field(ge=1, le=MAX_K)] = DEFAULT_K,
    ) -> dict:
        """Ranked offers for one customer on one channel; held products are never offered."""
        return _answer(ctx, self._recommend, customer_id, channel, k)

    def _recommend(self, customer_id: str, channel: str, k: int) -> dict:
        started = time.perf_counter()
        self._require_ready()
        features = self._online_features(customer_id)
        model_inputs = [f for f in features if f != CUSTOMER_ID]
        if all(features[f] is None for f in model_inputs):
            raise RequestError(404, "unknown customer_id: no features for this customer in the online store")
        row = pd.DataFrame([features])
        probs = self.nbp.predict(row)
        churn_risk = float(self.churn.predict(row)[0])
        held = {p.product_id: bool(features.get(f"held_{p.product_id}")) for p in self.products}
        allowed, suppressed = eligible_products(self.products, held, features.get("age"))
        blocked = contact_allowed(channel, {c: features.get(c) for c in POLICY_FEATURES})
        offers = [] if blocked else rank_offers(self.products, probs, allowed, k)
        decision_id = uuid.uuid4().hex
        versions = {NBP_MODEL_NAME: self.nbp.registered.version, CHURN_MODEL_NAME: self.churn.registered.version}
        pseudonym = pseudonymise(customer_id, self.key)
        self.events.log_decision(decision_id, pseudonym, channel, k, offers, versions,
                                 {"churn_risk": churn_risk, "blocked": blocked,
                                  "suppressed": [s.__dict__ for s in suppressed]})
        log.info("decision %s for %s on %s: %d offers", decision_id, pseudonym, channel, len(offers))
        return {
            "decision_id": decision_id,
            "customer_id": customer_id,
            "offers": offers,
            "model_versions": versions,
            "churn_risk": round(churn_risk, 6),
            "suppressed_by": blocked,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
        }

    @bentoml.api(route="/feedback")
    def feedback(
        self,
        ctx: bentoml.Context,
        decision_id: Annotated[str, Field(min_length=1, max_length=64)],
        product_id: Annotated[str, Field(min_length=1, max_length=64)],
        event: FeedbackEvent,
        value: float | None = None,
    ) -> dict:
        """Records the outcome of an offer; the same event for the same offer is counted once."""
        return _answer(ctx, self._feedback, decision_id, product_id, event, value)

    def _feedback(self, decision_id: str, product_id: str, event: str, value: float | None) -> dict:
        decision = self.events.get_decision(decision_id)
        if decision is None:
            raise RequestError(404, f"unknown decision_id {decision_id!r}")
        offered = {o["product_id"] for o in decision.offers}
        if product_id not in offered:
            raise RequestError(400, f"product_id {product_id!r} was not offered in decision {decision_id!r} "
                                    f"(offered: {sorted(offered)})")
        recorded = self.events.log_feedback(decision_id, product_id, event, value)
        return {"decision_id": decision_id, "product_id": product_id, "event": event, "recorded": recorded,
                "duplicate": not recorded}
