"""The dashboard's routes: login, ranked accounts and clusters, per-account and per-cluster pages,
actions with an audit log, and a re-scan. Starlette, server-rendered, no JavaScript.

Every page but the login needs a session; every POST needs the CSRF token; responses carry a
strict Content-Security-Policy (no scripts at all) and are never framed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from distillguard.detect.scan import ScanOptions
from distillguard.web import csrf, views
from distillguard.web.auth import COOKIE, LoginLimiter, PasswordCheck, Session, SessionStore
from distillguard.web.gateway import GatewayError, GatewayLink
from distillguard.web.queries import ACTIONS, APPEAL_DECISIONS, ActionLog, Snapshot

RANKED_ROWS = 500
MAX_FORM_BYTES = 16_384
PUSH_CONCURRENCY = 8               # gateway calls in flight at once for a cluster's members
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass
class WebConfig:
    db: Path
    state: Path                      # the dashboard's own DuckDB file (audit log)
    password: str
    options: ScanOptions = field(default_factory=ScanOptions)
    max_failures: int = 5            # failed logins per client address ...
    failure_window_s: float = 300.0  # ... within this window, then refused until it passes
    secure_cookie: bool = False      # set when served over HTTPS (a proxy in front)
    gateway: GatewayLink | None = None   # --gateway: actions pushed there, appeals read and decided there


class Dashboard:
    """State shared by the routes: the snapshot, the action log, sessions and the login limiter."""

    def __init__(self, config: WebConfig) -> None:
        self.config = config
        self.password = PasswordCheck(config.password)
        self.sessions = SessionStore()
        self.limiter = LoginLimiter(config.max_failures, config.failure_window_s)
        self.actions = ActionLog(config.state)
        # `baseline build --include-false-positives STATE` finds the events of marked accounts here.
        self.actions.set_meta("events_db", str(Path(config.db).resolve()))
        self._refresh_lock = threading.Lock()
        self._refresher: threading.Thread | None = None
        self.refresh_error: str | None = None
        self.snapshot = self._take()

    def _take(self) -> Snapshot:
        opts = self.config.options
        options = ScanOptions(baseline=opts.baseline, fpr=opts.fpr, engine=opts.engine,
                              price_per_million=opts.price_per_million, workers=opts.workers, intel=opts.intel,
                              allowlist=frozenset(opts.allowlist) | self.actions.feedback_allowlist())
        return Snapshot.take(self.config.db, options)

    def refresh(self) -> None:
        """Re-scan the store (analysts' allowlist and false positives fed back) and swap the snapshot."""
        with self._refresh_lock:
            # The old snapshot is not closed here: a page may still be reading it in another
            # thread; its in-memory database goes when the last reference does.
            self.snapshot = self._take()

    def start_refresh(self) -> bool:
        """Re-scan in a background thread (a large store takes minutes); False if one is running."""
        if self.refreshing:
            return False

        def run() -> None:
            try:
                self.refresh()
                self.refresh_error = None
            except Exception as exc:  # shown in the page banner; the old snapshot stays
                self.refresh_error = f"re-scan failed: {exc}"

        self._refresher = threading.Thread(target=run, name="distillguard-rescan", daemon=True)
        self._refresher.start()
        return True

    @property
    def refreshing(self) -> bool:
        return self._refresher is not None and self._refresher.is_alive()

    def wait_refresh(self, timeout: float | None = None) -> None:
        if self._refresher is not None:
            self._refresher.join(timeout)

    def close(self) -> None:
        self.snapshot.close()
        self.actions.close()

    def status(self) -> str:
        s = self.snapshot
        text = f"scanned {s.taken_at} ({s.seconds:.1f} s)"
        if self.refreshing:
            text += "; re-scan running…"
        elif self.refresh_error:
            text += f"; {self.refresh_error}"
        return text


def _html(body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={**_HEADERS, **(headers or {})})


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _form(request: Request) -> dict[str, str]:
    """URL-encoded form fields (first value of each); nothing else is accepted."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, "form too large")
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    if ctype != "application/x-www-form-urlencoded":
        return {}
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        return {}
    return {k: v[0] for k, v in fields.items()}


Handler = Callable[[Request, Dashboard, Session], Awaitable[Response]]


def _signed_in(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Redirect to the login page without a session; refuse a POST whose CSRF token is missing or wrong."""

    async def endpoint(request: Request) -> Response:
        dash: Dashboard = request.app.state.dashboard
        session = dash.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            if request.method == "POST":
                return _html(views.error_page(403, "Forbidden", "Sign in first."), 403)
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303, headers=_HEADERS)
        if request.method == "POST":
            form = await _form(request)
            if not csrf.valid(session.csrf, form.get(csrf.FIELD)):
                return _html(views.error_page(403, "Forbidden", "Missing or wrong CSRF token: reload the page and "
                                                               "try again.", user=session.user, csrf=session.csrf),
                             403)
            request.state.form = form
        return await handler(request, dash, session)

    return endpoint


def _chrome(dash: Dashboard, session: Session, request: Request | None = None) -> dict[str, Any]:
    chrome: dict[str, Any] = {"user": session.user, "csrf": session.csrf, "banner": dash.status()}
    done = request.query_params.get("done", "") if request is not None else ""
    if done.isdigit():   # after an action: what was recorded, and whether the gateway took it
        entry = dash.actions.get(int(done))
        if entry is not None:
            chrome["notice"] = views.push_notice(entry)
    return chrome


def _safe_next(target: str | None) -> str:
    # Only local paths: never an open redirect to another site.
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/accounts"


# ------------------------------------------------------------------ login

async def login_form(request: Request) -> Response:
    token = csrf.new_token()
    response = _html(views.login_page(token, next_path=_safe_next(request.query_params.get("next"))))
    response.set_cookie(csrf.LOGIN_COOKIE, token, httponly=True, samesite="strict", path="/login")
    return response


async def login(request: Request) -> Response:
    dash: Dashboard = request.app.state.dashboard
    form = await _form(request)
    if not csrf.valid(request.cookies.get(csrf.LOGIN_COOKIE), form.get(csrf.FIELD)):
        return _html(views.error_page(403, "Forbidden", "Missing or wrong CSRF token: reload the login page."), 403)
    client = _client(request)
    next_path = _safe_next(request.query_params.get("next"))
    wait = dash.limiter.retry_after(client)
    if wait:
        return _html(views.login_page(form[csrf.FIELD], f"Too many failed logins: try again in {wait:.0f} s.",
                                      next_path), 429, {"Retry-After": str(int(wait))})
    user = (form.get("user") or "analyst").strip()[:64] or "analyst"
    ok = await asyncio.to_thread(dash.password.verify, form.get("password", ""))
    if not ok:
        dash.limiter.failed(client)
        return _html(views.login_page(form[csrf.FIELD], "Wrong password.", next_path), 401)
    dash.limiter.succeeded(client)
    _, cookie = dash.sessions.create(user)
    response = RedirectResponse(next_path, status_code=303, headers=_HEADERS)
    response.set_cookie(COOKIE, cookie, httponly=True, samesite="strict", secure=dash.config.secure_cookie, path="/")
    response.delete_cookie(csrf.LOGIN_COOKIE, path="/login")
    return response


@_signed_in
async def logout(request: Request, dash: Dashboard, session: Session) -> Response:
    dash.sessions.drop(session.sid)
    response = RedirectResponse("/login", status_code=303, headers=_HEADERS)
    response.delete_cookie(COOKIE, path="/")
    return response


# ------------------------------------------------------------------ pages

async def home(request: Request) -> Response:
    return RedirectResponse("/accounts", status_code=303, headers=_HEADERS)


@_signed_in
async def accounts(request: Request, dash: Dashboard, session: Session) -> Response:
    snap = dash.snapshot
    rows = snap.data["accounts"][:RANKED_ROWS]
    return _html(views.accounts_page(rows, snap.data["summary"], snap.events, dash.actions.current("account"),
                                     total=len(snap.data["accounts"]), **_chrome(dash, session)))


@_signed_in
async def clusters(request: Request, dash: Dashboard, session: Session) -> Response:
    return _html(views.clusters_page(dash.snapshot.data["clusters"], dash.actions.current("cluster"),
                                     **_chrome(dash, session)))


def _not_found(kind: str, name: str, dash: Dashboard, session: Session) -> Response:
    return _html(views.error_page(404, f"No such {kind}", f"There is no {kind} {name!r} in the scanned store.",
                                  **_chrome(dash, session)), 404)


@_signed_in
async def account(request: Request, dash: Dashboard, session: Session) -> Response:
    snap = dash.snapshot
    name = request.path_params["account"]
    a = snap.accounts.get(name)
    if a is None:
        return _not_found("account", name, dash, session)
    unit, timeline = snap.timeline(name)
    chrome = _chrome(dash, session, request)
    return _html(views.account_page(a, unit=unit, timeline=timeline, cadence=snap.cadence(name),
                                    samples=snap.samples(name), plots=snap.plots.get(name, {}),
                                    decisions=snap.decisions(name), coverage=snap.coverage(name),
                                    band=snap.coverage_band(),
                                    state=dash.actions.current("account").get(name),
                                    history=dash.actions.entries(target_kind="account", target=name, limit=50),
                                    **chrome))


@_signed_in
async def cluster(request: Request, dash: Dashboard, session: Session) -> Response:
    snap = dash.snapshot
    name = request.path_params["cluster"]
    c = snap.clusters.get(name)
    if c is None:
        return _not_found("cluster", name, dash, session)
    members = [snap.accounts[m] for m in c["accounts"] if m in snap.accounts]
    return _html(views.cluster_page(c, members, state=dash.actions.current("cluster").get(name),
                                    member_states=dash.actions.current("account"),
                                    history=dash.actions.entries(target_kind="cluster", target=name, limit=50),
                                    edges=snap.links.get(name, []), **_chrome(dash, session, request)))


@_signed_in
async def audit(request: Request, dash: Dashboard, session: Session) -> Response:
    return _html(views.audit_page(dash.actions.entries(limit=1000), gateway=dash.config.gateway is not None,
                                  **_chrome(dash, session)))


def _noted(prefix: str, note: str) -> str:
    return f"{prefix}: {note}" if note else prefix


async def _push(dash: Dashboard, gateway: GatewayLink, entry_id: int, action: str, account: str, note: str,
                analyst: str) -> str:
    """Send one account action to the gateway and record the outcome on its audit row."""
    reason = f"{note} ({analyst} via the dashboard, audit #{entry_id})" if note else \
        f"{analyst} via the dashboard, audit #{entry_id}"
    try:
        await gateway.push(action, account, reason)
        outcome = "sent"
    except GatewayError as exc:
        outcome = f"failed: {exc}"
    dash.actions.set_pushed(entry_id, outcome)
    return outcome


@_signed_in
async def act(request: Request, dash: Dashboard, session: Session) -> Response:
    form: dict[str, str] = request.state.form
    kind, target, action = form.get("target_kind", ""), form.get("target", ""), form.get("action", "")
    snap = dash.snapshot
    known = snap.accounts if kind == "account" else snap.clusters if kind == "cluster" else None
    if known is None or action not in ACTIONS:
        return _html(views.error_page(400, "Bad request", "target_kind must be account or cluster and action one of "
                                      + ", ".join(ACTIONS) + ".", **_chrome(dash, session)), 400)
    if target not in known:
        return _not_found(kind, target, dash, session)
    gateway = dash.config.gateway
    note = form.get("note", "")[:500]
    # The audit row is written first: a gateway that is down loses the push, never the record.
    entry = dash.actions.record(analyst=session.user, client=_client(request), target_kind=kind, target=target,
                                action=action, note=note, pushed="pending" if gateway else None)
    if kind == "account":
        if gateway is not None:
            await _push(dash, gateway, entry, action, target, note, session.user)
    else:
        # A cluster's action is each member's: one audit row per member, each pushed.
        members = list(known[target]["accounts"])
        rows = [(m, dash.actions.record(analyst=session.user, client=_client(request), target_kind="account",
                                        target=m, action=action, note=_noted(f"cluster {target}", note),
                                        pushed="pending" if gateway else None)) for m in members]
        if gateway is not None:
            limit = asyncio.Semaphore(PUSH_CONCURRENCY)

            async def one(member: str, row: int) -> str:
                async with limit:
                    return await _push(dash, gateway, row, action, member, note, session.user)

            outcomes = await asyncio.gather(*(one(m, row) for m, row in rows))
            failed = [o for o in outcomes if o != "sent"]
            dash.actions.set_pushed(entry, "sent" if not failed else
                                    f"failed for {len(failed)} of {len(outcomes)} members: {failed[0][8:]}")
    path = views.url("accounts" if kind == "account" else "clusters", target)
    return RedirectResponse(f"{path}?done={entry}", status_code=303, headers=_HEADERS)


# ------------------------------------------------------------------ appeals (held by the gateway)

@_signed_in
async def appeals(request: Request, dash: Dashboard, session: Session) -> Response:
    chrome = _chrome(dash, session, request)
    gateway = dash.config.gateway
    if gateway is None:
        return _html(views.appeals_page(None, {}, {}, error=None, **chrome))
    try:
        data = await gateway.appeals()
    except GatewayError as exc:
        return _html(views.appeals_page(None, {}, {}, error=str(exc), **chrome), 502)
    return _html(views.appeals_page(data, dash.snapshot.accounts, dash.actions.current("account"), error=None,
                                    **chrome))


@_signed_in
async def appeal_decision(request: Request, dash: Dashboard, session: Session) -> Response:
    form: dict[str, str] = request.state.form
    appeal_id, decision = request.path_params["appeal"], form.get("decision", "")
    gateway = dash.config.gateway
    if decision not in APPEAL_DECISIONS:
        return _html(views.error_page(400, "Bad request", "decision must be uphold or lift.",
                                      **_chrome(dash, session)), 400)
    if gateway is None:
        return _html(views.error_page(409, "No gateway", "Appeals live in the gateway: start the dashboard with "
                                      "--gateway URL --gateway-token-file FILE.", **_chrome(dash, session)), 409)
    note = form.get("note", "")[:500]
    client = _client(request)
    try:
        appeal = await gateway.appeal(appeal_id)
    except GatewayError as exc:
        if exc.status == 404:
            return _html(views.error_page(404, "No such appeal", f"The gateway has no appeal {appeal_id!r}.",
                                          **_chrome(dash, session)), 404)
        entry = dash.actions.record(analyst=session.user, client=client, target_kind="appeal", target=appeal_id,
                                    action=decision, note=note, pushed=f"failed: {exc}")
        return RedirectResponse(f"/appeals?done={entry}", status_code=303, headers=_HEADERS)
    account = appeal.get("account", "")
    entry = dash.actions.record(analyst=session.user, client=client, target_kind="appeal", target=appeal_id,
                                action=decision, note=_noted(account, note), pushed="pending")
    try:
        await gateway.decide(appeal_id, decision, note, session.user)
        outcome = "sent"
    except GatewayError as exc:
        outcome = f"failed: {exc}"
    dash.actions.set_pushed(entry, outcome)
    if outcome == "sent" and decision == "lift":
        # The gateway's lift is an operator allow; here the account becomes a false positive
        # (scanned as authorised on the next re-scan, and fed to `baseline build`).
        dash.actions.record(analyst=session.user, client=client, target_kind="account", target=account,
                            action="false_positive", note=_noted(f"appeal {appeal_id} lifted", note),
                            pushed="sent")
    return RedirectResponse(f"/appeals?done={entry}", status_code=303, headers=_HEADERS)


@_signed_in
async def refresh(request: Request, dash: Dashboard, session: Session) -> Response:
    dash.start_refresh()  # pages keep serving the current snapshot until the new one is ready
    return RedirectResponse("/accounts", status_code=303, headers=_HEADERS)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    titles = {404: "Not found", 405: "Method not allowed", 413: "Form too large"}
    return _html(views.error_page(status, titles.get(status, "Error"), "There is no such page."
                                  if status == 404 else str(getattr(exc, "detail", ""))), status)


def build_app(config: WebConfig, dashboard: Dashboard | None = None) -> Starlette:
    """The ASGI app; the store is scanned once here (before serving), and on each re-scan."""
    dash = dashboard or Dashboard(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        dash.wait_refresh()
        dash.close()

    routes = [
        Route("/", home), Route("/login", login_form, methods=["GET"]), Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]), Route("/accounts", accounts),
        Route("/accounts/{account:path}", account), Route("/clusters", clusters),
        Route("/clusters/{cluster:path}", cluster), Route("/audit", audit),
        Route("/actions", act, methods=["POST"]), Route("/refresh", refresh, methods=["POST"]),
        Route("/appeals", appeals), Route("/appeals/{appeal}/decision", appeal_decision, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error})
    app.state.dashboard = dash
    return app
