"""Step 1 of the request path: who is calling. API keys (Bearer) for the OpenAI endpoints and
the appeals API, the admin token for /admin/..., the client's address, and the body read with a
size limit."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from distillguard.gateway.clientaddr import client_address
from distillguard.gateway.keys import KeyInfo
from distillguard.gateway.openai_errors import openai_error

if TYPE_CHECKING:
    from distillguard.gateway.core import Gateway


def authenticate(gw: Gateway, request: Request) -> KeyInfo | None:
    auth = request.headers.get("authorization", "")
    if not auth.lower().startswith("bearer "):
        return None
    return gw.keys.lookup(auth[7:].strip())


def client_ip(gw: Gateway, request: Request) -> str | None:
    """The TCP peer, or the client a configured trusted proxy names (:mod:`clientaddr`)."""
    return client_address(request.client.host if request.client else None, request.headers.get("x-forwarded-for"),
                          gw.proxy_networks)


async def read_body(gw: Gateway, request: Request) -> bytes | None:
    """The body, or None when it is larger than ``max_body_bytes`` (checked while reading)."""
    limit = gw.config.max_body_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def admin_denied(gw: Gateway, request: Request) -> Response | None:
    if gw.admin_token is None:
        return openai_error(403, "the admin API is disabled: start the gateway with --admin-token or "
                                 "DISTILLGUARD_ADMIN_TOKEN", "admin_disabled", kind="permission_denied")
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    if token and hmac.compare_digest(token.encode(), gw.admin_token.encode()):
        return None
    if token and gw.keys.lookup(token) is not None:
        return openai_error(403, "API keys cannot use the admin API; use the admin token", "admin_forbidden",
                            kind="permission_denied")
    return openai_error(401, "missing or wrong admin token", "invalid_admin_token")
