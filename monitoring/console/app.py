"""The console's ASGI application (Starlette): routes, the API-key check, and pages for bad input.

Pages are plain functions, which Starlette runs in its thread pool: their reads of SQLite and
parquet block, and must not hold up the event loop (nor each other).

`console_app(paths)` builds the application over one work directory. With `NEXTBEST_API_KEY` set
(the service's key), every page asks for it: an `x-api-key` header, or the key typed once into the
console's sign-in form, which leaves a cookie holding a keyed hash of it (never the key itself).
Nothing is written to the work directory; bad input gets a page that says what is wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import threading
import time
from contextlib import asynccontextmanager
from functools import cached_property
from html import escape

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from nextbest.constants import CHANNELS
from nextbest.monitoring.console import queries
from nextbest.monitoring.console.files import latest_features, pseudonym_key, registry, registry_client
from nextbest.monitoring.console.campaigns import campaigns_page
from nextbest.monitoring.console.customer import check_id, customer_page
from nextbest.monitoring.console.decisions import decisions_page
from nextbest.monitoring.console.layout import error, frame, parse_day
from nextbest.monitoring.console.models import models_page
from nextbest.monitoring.console.overview import overview_page, period_form
from nextbest.serving.privacy import pseudonymise
from nextbest.settings import Paths

log = logging.getLogger(__name__)
API_KEY_ENV = "NEXTBEST_API_KEY"  # the decision service's key (nextbest.serving.service reads the same variable)
API_KEY_HEADER = "x-api-key"
COOKIE = "nextbest_console"
REPORT_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}[\w.-]*$")
REPORT_FILE = re.compile(r"^[\w.-]+\.(html|json)$")
DAY = 86400.0
ENGINE_RETRY_S = 60.0  # a decision engine that could not start (no models yet) is tried again after this


class Console:
    """What the pages read: the work directory's paths and the configs in force, loaded once."""

    def __init__(self, paths: Paths):
        self.paths = paths
        self.root = paths.root
        self._clients: dict = {}
        self._lock = threading.Lock()
        self._engine = self._engine_error = self._engine_thread = None
        self._engine_failed_at = 0.0

    def connect(self):
        return queries.connect(self.paths.events_db)

    @cached_property
    def _catalogue(self):
        from nextbest.config import ConfigError, load_catalogue

        try:
            return load_catalogue()
        except (ConfigError, OSError):
            return None

    def catalogue(self):
        return self._catalogue

    def margins(self) -> dict[str, float]:
        cat = self._catalogue
        return {} if cat is None else {p.product_id: float(p.margin) for p in cat.products}

    def product_ids(self) -> list[str]:
        cat = self._catalogue
        return [] if cat is None else [p.product_id for p in cat.products]

    def campaigns(self) -> tuple[dict, str]:
        """{name: campaign as a dict} of configs/campaigns.yaml, and why it could not be read ("" if it could)."""
        from nextbest.config import ConfigError, load_campaigns

        try:
            return {k: c.model_dump() for k, c in load_campaigns().campaigns.items()}, ""
        except (ConfigError, OSError) as exc:
            return {}, f"configs/campaigns.yaml could not be read: {exc}"

    def campaign_products(self) -> dict:
        """Campaigns whose control groups the uplift measures: global, bandit.yaml's and the outbound ones."""
        from nextbest.config import ConfigError
        from nextbest.monitoring.charts import holdout_campaigns

        try:
            return holdout_campaigns()
        except (ConfigError, OSError):
            return {"all": "all", **{k: c["products"] for k, c in self.campaigns()[0].items()}}

    def mlflow_uri(self) -> str:
        return self.paths.mlflow_uri

    def _client(self):
        """The registry's MLflow client, made once per registry (making one takes about a second)."""
        uri = self.mlflow_uri()
        with self._lock:
            if uri not in self._clients or self._clients[uri] is None:
                self._clients[uri] = registry_client(uri)
            return self._clients[uri]

    def registry(self) -> tuple[dict | None, str]:
        """`files.registry` of the registry in force (None when there is none), and why it could not be read."""
        try:
            client = self._client()
            return (None, "") if client is None else (registry(client), "")
        except Exception as exc:  # noqa: BLE001 - whatever MLflow raises, the page says so instead of failing
            log.warning("model registry %s could not be read: %s", self.mlflow_uri(), exc)
            return None, f"The model registry could not be read ({type(exc).__name__}); the console's log says why."

    def engine(self):
        """(the read-only decision engine, "") once it is ready, else (None, what the page should say). The
        first call starts loading it in the background: the models take seconds."""
        with self._lock:
            retry = (self._engine_error is not None and not self._engine_thread.is_alive()
                     and time.monotonic() - self._engine_failed_at > ENGINE_RETRY_S)
            if (self._engine is None and self._engine_thread is None) or retry:  # first call, or a later try
                self._engine_thread = threading.Thread(target=self._load_engine, name="engine-loader", daemon=True)
                self._engine_thread.start()
            engine, error = self._engine, self._engine_error
        if engine is not None and engine.ready:
            return engine, ""
        if error is not None:
            return None, f"The decision engine could not start: {error}. It tries again a minute later."
        return None, "The decision engine is loading (the models take a few seconds the first time); reload the page."

    def _load_engine(self) -> None:
        """The engine reads each customer's features from the feature files' newest rows (what
        `materialize` puts in the online store), so the console never imports Feast."""
        from nextbest.serving.engine import DecisionEngine

        try:
            engine = DecisionEngine(self.paths, readonly=True,
                                    features=lambda customer_id: latest_features(self.paths.features, customer_id))
            engine.load()
            error = None if engine.ready else engine.error
        except Exception as exc:  # noqa: BLE001 - the portrait says why, instead of failing
            engine, error = None, f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._engine, self._engine_error = engine, error
            self._engine_failed_at = time.monotonic()

    def warm(self) -> None:
        """Imports MLflow and opens the registry ahead of the first models page, then starts loading the
        read-only decision engine ahead of the first portrait."""
        try:
            self._client()
        except Exception as exc:  # noqa: BLE001 - the models page reports it when asked
            log.info("model registry not opened ahead: %s", exc)
        self.engine()


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers={"cache-control": "no-store"})


def _period(request: Request) -> tuple[float | None, float | None]:
    """[from, to + 1 day) of the query's dates. Raises ValueError naming a malformed or reversed range."""
    since = parse_day(request.query_params.get("from"), "from")
    until = parse_day(request.query_params.get("to"), "to")
    if until is not None:
        until += DAY  # the end date is included
    if since is not None and until is not None and since >= until:
        raise ValueError("from: the start date is after the end date")
    return since, until


def overview(request: Request) -> Response:
    c: Console = request.app.state.console
    try:
        since, until = _period(request)
    except ValueError as exc:
        form = period_form(request.query_params.get("from", ""), request.query_params.get("to", ""), "/")
        return _html(frame("Overview", form + error(str(exc)), "/"), 400)
    return _html(overview_page(c, since, until, request.query_params.get("from", ""),
                               request.query_params.get("to", "")))


def campaigns(request: Request) -> Response:
    return _html(campaigns_page(request.app.state.console))


def customer(request: Request) -> Response:
    channel = request.query_params.get("channel", "mobile_app")
    if channel not in CHANNELS:
        return _html(frame("Customer portrait", error(f"channel: {channel[:40]!r} is not one of "
                                                      f"{', '.join(CHANNELS)}"), "/customer"), 400)
    return _html(customer_page(request.app.state.console, request.query_params.get("id", ""), channel))


def decisions(request: Request) -> Response:
    c: Console = request.app.state.console
    q = request.query_params
    values = {k: q.get(k, "").strip() for k in ("customer", "channel", "product", "from", "to")}
    values["flags"] = tuple(f for f in q.getlist("flag") if f in queries.FLAGS)
    problems = []
    try:
        since, until = _period(request)
    except ValueError as exc:
        problems.append(str(exc))
        since = until = None
    before = q.get("before")
    if before is not None and not before.isdigit():
        problems.append(f"before: {before[:20]!r} is not a page position")
        before = None
    pseudonym = None
    if values["customer"]:
        problem = check_id(values["customer"])
        key = pseudonym_key(c.root)
        if problem:
            problems.append(problem)
        elif key is None:
            pseudonym = "-"  # no key: nothing was ever logged, so nothing matches
        else:
            pseudonym = pseudonymise(values["customer"], key)
    if problems:
        return _html(decisions_page(c, values, None, None, "; ".join(problems)), 400)
    filters = queries.Filters(pseudonym=pseudonym, channel=values["channel"] or None,
                              product=values["product"] or None, since=since, until=until, flags=values["flags"])
    return _html(decisions_page(c, values, filters, int(before) if before else None))


def models(request: Request) -> Response:
    return _html(models_page(request.app.state.console))


def report_file(request: Request) -> Response:
    c: Console = request.app.state.console
    folder, name = request.path_params["folder"], request.path_params["name"]
    path = c.root / "reports" / folder / name
    if not (REPORT_DIR.match(folder) and REPORT_FILE.match(name) and path.is_file()):
        return _html(frame("Report", error(f"No report {folder}/{name} in the work directory.")), 404)
    return FileResponse(path, media_type="text/html" if name.endswith(".html") else "application/json")


def _token(key: bytes) -> str:
    return hmac.new(key, b"nextbest-console", hashlib.sha256).hexdigest()


async def sign_in(request: Request) -> Response:
    key: bytes | None = request.app.state.key
    if request.method == "POST" and key is not None:
        form = await request.form()
        typed = str(form.get("key", "")).encode()
        if hmac.compare_digest(typed, key):
            response = RedirectResponse(_safe_next(str(form.get("next", "/"))), status_code=303)
            response.set_cookie(COOKIE, _token(key), httponly=True, samesite="strict")
            return response
        return _sign_in_page("That key is not the service's key.", str(form.get("next", "/")), 401)
    return _sign_in_page("", request.query_params.get("next", "/"), 200)


def _safe_next(target: str) -> str:
    return target if target.startswith("/") and not target.startswith("//") else "/"


def _sign_in_page(problem: str, target: str, status: int) -> HTMLResponse:
    body = (("" if not problem else error(problem))
            + "<p>This console is behind the decision service's API key (<code>NEXTBEST_API_KEY</code>).</p>"
            '<form method="post" action="/sign-in">'
            f'<input type="hidden" name="next" value="{escape(_safe_next(target))}">'
            'API key <input type="password" name="key" autofocus> <button>Sign in</button></form>')
    return _html(frame("Sign in", body), status)


class KeyCheck:
    """ASGI middleware: every page but the sign-in form needs the key when one is set."""

    def __init__(self, app, key: bytes | None):
        self.app, self.key = app, key
        self.token = None if key is None else _token(key).encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.key is None or scope.get("path") == "/sign-in":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if hmac.compare_digest(headers.get(API_KEY_HEADER.encode(), b""), self.key):
            return await self.app(scope, receive, send)
        cookies = Request(scope).cookies
        if hmac.compare_digest(cookies.get(COOKIE, "").encode(), self.token):
            return await self.app(scope, receive, send)
        target = scope.get("path", "/")
        response = _sign_in_page("Sign in with the service's API key to read this page.", target, 401)
        await response(scope, receive, send)


async def _not_found(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 404:
        return _html(frame("Not found", error(f"There is no page {request.url.path}.")), 404)
    return _html(frame("Error", error(str(exc.detail))), exc.status_code)


async def _failed(request: Request, exc: Exception) -> Response:
    log.exception("console page %s failed", request.url.path)
    return _html(frame("Error", error("This page could not be built from the work directory; the console's log "
                                      "says why.")), 500)


def console_app(paths: Paths, api_key: str | None = None) -> Starlette:
    """The console over the work directory of `paths`.

    Args:
        api_key: the key pages ask for; default `$NEXTBEST_API_KEY` (none when unset or empty).
    """
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
    routes = [Route("/", overview), Route("/campaigns", campaigns), Route("/customer", customer),
              Route("/decisions", decisions), Route("/models", models),
              Route("/reports/{folder}/{name}", report_file), Route("/sign-in", sign_in, methods=["GET", "POST"])]
    console = Console(paths)

    @asynccontextmanager
    async def lifespan(app):
        # MLflow takes seconds to import: do it while the first pages are read, not on the models page.
        threading.Thread(target=console.warm, name="registry-warm-up", daemon=True).start()
        yield

    app = Starlette(routes=routes, exception_handlers={HTTPException: _not_found, Exception: _failed},
                    lifespan=lifespan)
    app.state.console = console
    app.state.key = key.encode() if key else None
    app.add_middleware(KeyCheck, key=app.state.key)
    return app
