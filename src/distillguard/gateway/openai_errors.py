"""Answers in the OpenAI API's shapes: error JSON ({"error": {message, type, param, code}}), plain
JSON results, and a small JSON-object request body read with a size limit."""

from __future__ import annotations

import errno
import uuid
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

JSON = "application/json"


def openai_error(status: int, message: str, code: str, *, kind: str = "invalid_request_error",
                 param: str | None = None, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> Response:
    """An OpenAI-format error; it carries an ``x-request-id`` (a fresh one unless ``headers`` has it),
    so even a request refused before it became an event can be named in a support ticket."""
    body: dict[str, Any] = {"message": message, "type": kind, "param": param, "code": code}
    if extra:
        body["distillguard"] = extra
    headers = dict(headers or {})
    if not any(k.lower() == "x-request-id" for k in headers):
        headers["x-request-id"] = uuid.uuid4().hex
    return Response(orjson.dumps({"error": body}), status_code=status, media_type=JSON, headers=headers)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown path, wrong method) in the OpenAI format, not plain text."""
    status = getattr(exc, "status_code", 500)
    if status == 405:
        return openai_error(405, f"{request.method} is not allowed on {request.url.path}", "method_not_allowed",
                            headers=getattr(exc, "headers", None))
    if status == 404:
        return openai_error(404, f"no such endpoint: {request.method} {request.url.path}", "not_found")
    return openai_error(status, str(getattr(exc, "detail", "")) or "request failed", "http_error")


async def internal_error(request: Request, exc: Exception) -> Response:
    """An unexpected exception: still OpenAI-format JSON, with no traceback to the client. A full or
    failing disk (saving admin state, filing an appeal) is a 503 to retry, anything else a 500."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):
        return openai_error(503, "the gateway cannot write its state right now; retry shortly", "storage_unavailable",
                            kind="server_error", headers={"retry-after": "1"})
    return openai_error(500, "internal error in the gateway", "internal_error", kind="server_error")


def json_ok(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=JSON)


async def read_json_object(request: Request, limit: int = 1 << 20) -> dict[str, Any] | Response:
    """The body as a JSON object, or the OpenAI error to answer with (too large, not JSON, not an object)."""
    raw = await request.body()
    if len(raw) > limit:
        return openai_error(400, f"request body larger than {limit:,} bytes", "request_too_large")
    try:
        data = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as exc:
        return openai_error(400, f"request body is not valid JSON ({exc})", "invalid_json")
    if not isinstance(data, dict):
        return openai_error(400, "request body must be a JSON object", "invalid_request")
    return data
