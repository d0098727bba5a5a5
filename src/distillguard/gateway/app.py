"""The enforcing gateway: an OpenAI-compatible proxy (Starlette) that logs, scores and acts.

This module is the route table; each job has its own module:

- :mod:`core`: :class:`Gateway`, what one process holds (keys, scorer, policy, log, loader, intel,
  appeals) and its start/stop;
- the request path of the OpenAI endpoints, :mod:`proxy`: :mod:`auth` (API key, body) →
  :mod:`decide` (scorer + policy; blocks and throttles answered at once) → :mod:`forward` /
  :mod:`streaming` (upstream over a keep-alive pool, SSE chunk by chunk) → :mod:`record` (one event
  per request, fsync awaited before the client sees the end of the answer);
- :mod:`admin` (the admin API), :mod:`appeals_api` (users' appeals and the analysts' queue),
  :mod:`health` (/healthz, /metrics), :mod:`openai_errors` (OpenAI error JSON).

To add an endpoint: write its handler in the module of its job and add one line to :data:`ROUTES`.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from distillguard.events.schema import CHAT_ENDPOINT, COMPLETIONS_ENDPOINT, EMBEDDINGS_ENDPOINT, RESPONSES_ENDPOINT
from distillguard.gateway import admin, appeals_api, batches, health, proxy
from distillguard.gateway.admin import account_view
from distillguard.gateway.appeals import APPEAL_PATH
from distillguard.gateway.core import Gateway
from distillguard.gateway.openai_errors import http_error, internal_error, openai_error

__all__ = ["ROUTES", "Gateway", "account_view", "build_app", "openai_error"]

ROUTES = [
    # OpenAI-compatible endpoints (API keys): authenticate → decide → proxy → log
    Route(CHAT_ENDPOINT, proxy.proxy, methods=["POST"]),
    Route(COMPLETIONS_ENDPOINT, proxy.proxy, methods=["POST"]),
    Route(RESPONSES_ENDPOINT, proxy.proxy, methods=["POST"]),
    Route(EMBEDDINGS_ENDPOINT, proxy.proxy, methods=["POST"]),
    Route("/v1/models", proxy.models, methods=["GET"]),
    Route("/v1/models/{model:path}", proxy.models, methods=["GET"]),
    # the Batch API: each request line judged at upload, each answer line logged when fetched
    Route("/v1/files", batches.upload_file, methods=["POST"]),
    Route("/v1/files", batches.list_owned, methods=["GET"]),
    Route("/v1/files/{oid}", batches.get_owned, methods=["GET", "DELETE"]),
    Route("/v1/files/{oid}/content", batches.get_owned, methods=["GET"]),
    Route("/v1/batches", batches.create_batch, methods=["POST"]),
    Route("/v1/batches", batches.list_owned, methods=["GET"]),
    Route("/v1/batches/{oid}", batches.get_owned, methods=["GET"]),
    Route("/v1/batches/{oid}/cancel", batches.get_owned, methods=["POST"]),
    # appeals by users (their own API key)
    Route(APPEAL_PATH, appeals_api.appeal_file, methods=["POST"]),
    Route(APPEAL_PATH, appeals_api.appeal_list, methods=["GET"]),
    # operations (no credentials)
    Route("/healthz", health.health, methods=["GET"]),
    Route("/metrics", health.metrics, methods=["GET"]),
    # admin API (the admin token)
    Route("/admin/status", admin.admin_status, methods=["GET"]),
    Route("/admin/accounts", admin.admin_accounts, methods=["GET"]),
    Route("/admin/accounts/{account}", admin.admin_account, methods=["GET"]),
    Route("/admin/accounts/{account}/action", admin.admin_action, methods=["POST"]),
    Route("/admin/allowlist", admin.admin_allowlist, methods=["GET"]),
    Route("/admin/allowlist/{account}", admin.admin_allowlist_change, methods=["PUT", "DELETE"]),
    Route("/admin/clusters", admin.admin_clusters, methods=["GET"]),
    Route("/admin/keys", admin.admin_keys, methods=["POST"]),
    Route("/admin/keys/revoke", admin.admin_keys, methods=["POST"]),
    Route("/admin/appeals", appeals_api.admin_appeals, methods=["GET"]),
    Route("/admin/appeals/{appeal}", appeals_api.admin_appeal, methods=["GET"]),
    Route("/admin/appeals/{appeal}/decision", appeals_api.admin_appeal_decision, methods=["POST"]),
    Route("/admin/intel", admin.admin_intel, methods=["GET"]),
    Route("/admin/intel/reload", admin.admin_intel_reload, methods=["POST"]),
]


PROXY_PATHS = frozenset({CHAT_ENDPOINT, COMPLETIONS_ENDPOINT, RESPONSES_ENDPOINT, EMBEDDINGS_ENDPOINT})


class GatewayApp(Starlette):
    """The route table above, with one shortcut: a POST to an OpenAI endpoint goes straight to
    :func:`proxy.proxy`, the handler the table names for it, past Starlette's router, middleware
    and per-request wrappers (about 6 % of a proxied request's CPU). Errors are answered as those
    layers answer them (:func:`http_error`, :func:`internal_error`, then re-raised for the server
    to log); every other request, and the lifespan, takes the full path."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in PROXY_PATHS
                or scope.get("root_path")):
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        request = Request(scope, receive, send)
        try:
            response = await proxy.proxy(request)
        except HTTPException as exc:
            response = await http_error(request, exc)
        except Exception as exc:
            await (await internal_error(request, exc))(scope, receive, send)
            raise
        await response(scope, receive, send)


def build_app(gateway: Gateway) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette):
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = GatewayApp(routes=list(ROUTES), lifespan=lifespan,
                     exception_handlers={HTTPException: http_error, Exception: internal_error})
    app.state.gateway = gateway
    return app
