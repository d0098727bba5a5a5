"""The appeals API. Users: POST/GET /v1/appeals with their own API key (file an appeal against a
block or throttle, read the answers). Analysts: /admin/appeals... with the admin token (queue,
one appeal, decide: uphold, or lift, which allows the account). The book itself: :mod:`appeals`."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from distillguard.gateway.admin import account_view, admin
from distillguard.gateway.appeals import AppealError, check_message
from distillguard.gateway.auth import authenticate
from distillguard.gateway.core import Gateway
from distillguard.gateway.openai_errors import json_ok, openai_error, read_json_object
from distillguard.gateway.policy import ManualAction

log = logging.getLogger("distillguard.gateway")

APPEAL_BODY_BYTES = 16_384
REFUSAL_APPEALABLE_S = 7 * 86400.0   # a refusal older than this is no longer grounds for an appeal


def _appeal_error(exc: AppealError, *, public: bool) -> Response:
    headers = {"retry-after": str(max(1, int(exc.retry_after + 0.999)))} if exc.retry_after else None
    extra = None
    if exc.appeal is not None:
        extra = {"appeal": exc.appeal.public() if public else exc.appeal.to_dict()}
    return openai_error(exc.status, exc.message, exc.code, param=exc.param, headers=headers, extra=extra,
                        kind="rate_limit_exceeded" if exc.status == 429 else "invalid_request_error")


def _standing(gw: Gateway, account: str) -> dict[str, Any]:
    """What the gateway holds against an account now: the grounds of an appeal, kept with it."""
    manual = gw.policy.manual.get(account)
    refusal = gw.refusals.get(account)
    if refusal is not None and time.time() - refusal["at"] > REFUSAL_APPEALABLE_S:
        refusal = None
    view = account_view(gw, account)
    return {"appealable": (manual is not None and manual.action in ("block", "throttle")) or refusal is not None,
            "manual": manual.to_dict() if manual is not None else None, "refusal": refusal,
            "flagged": bool(view and view["flagged"]), "score": view["score"] if view else None,
            "reasons": [r["detail"] for r in view["reasons"][:3]] if view else []}


async def appeal_file(request: Request) -> Response:
    """POST /v1/appeals with the user's own API key: {"message": "..."}."""
    gw: Gateway = request.app.state.gateway
    info = authenticate(gw, request)
    if info is None:
        gw.metrics.auth_failures.inc()
        return openai_error(401, "Incorrect or missing API key. Send 'Authorization: Bearer <key>'.",
                            "invalid_api_key")
    data = await read_json_object(request, APPEAL_BODY_BYTES)
    if isinstance(data, Response):
        return data
    try:
        check_message(data.get("message"))
        appeal = await run_in_threadpool(gw.appeals.file, info.account, info.key_id, data.get("message"),
                                         _standing(gw, info.account))
    except AppealError as exc:
        return _appeal_error(exc, public=True)
    log.info("appeal %s filed by %s", appeal.id, info.account)
    if gw.fleet is not None:
        gw.fleet.share("appeal", appeal.id, appeal.to_dict())
    return json_ok(appeal.public(), status=201)


async def appeal_list(request: Request) -> Response:
    """GET /v1/appeals: the caller's own appeals, newest first, with the analysts' answers."""
    gw: Gateway = request.app.state.gateway
    info = authenticate(gw, request)
    if info is None:
        gw.metrics.auth_failures.inc()
        return openai_error(401, "Incorrect or missing API key.", "invalid_api_key")
    return json_ok({"object": "list", "data": [a.public() for a in gw.appeals.of_account(info.account)]})


@admin
async def admin_appeals(request: Request, gw: Gateway) -> Response:
    status = request.query_params.get("status") or None
    if status is not None and status not in ("open", "upheld", "lifted"):
        return openai_error(400, "status must be open, upheld or lifted", "invalid_request", param="status")
    try:
        limit = max(1, min(10_000, int(request.query_params.get("limit", "500"))))
    except ValueError:
        return openai_error(400, "limit must be an integer", "invalid_request", param="limit")
    rows = gw.appeals.queue(status, request.query_params.get("account") or None)
    return json_ok({"appeals": [a.to_dict() for a in rows[:limit]], "total": len(rows), "counts": gw.appeals.counts()})


@admin
async def admin_appeal(request: Request, gw: Gateway) -> Response:
    appeal = gw.appeals.get(request.path_params["appeal"])
    if appeal is None:
        return openai_error(404, f"no appeal {request.path_params['appeal']!r}", "not_found")
    return json_ok(appeal.to_dict())


@admin
async def admin_appeal_decision(request: Request, gw: Gateway) -> Response:
    """{"decision": "uphold" | "lift", "note": "...", "analyst": "..."}; lift removes the block."""
    data = await read_json_object(request, APPEAL_BODY_BYTES)
    if isinstance(data, Response):
        return data
    appeal_id = request.path_params["appeal"]
    try:
        appeal = await run_in_threadpool(gw.appeals.decide, appeal_id, data.get("decision"), data.get("note"),
                                         data.get("analyst"))
    except AppealError as exc:
        return _appeal_error(exc, public=False)
    if appeal.status == "lifted":
        # An operator's allow: exempt from the automatic rules (the live verdict would block again).
        reason = f"appeal {appeal.id} lifted" + (f": {appeal.note}" if appeal.note else "")
        gw.policy.manual[appeal.account] = ManualAction(action="allow", reason=reason, set_at=time.time())
        gw.refusals.pop(appeal.account, None)
        gw.save_admin_state()
        if gw.fleet is not None:
            gw.fleet.share("manual", appeal.account, gw.policy.manual[appeal.account].to_dict())
    if gw.fleet is not None:
        gw.fleet.share("appeal", appeal.id, appeal.to_dict())
    log.info("appeal %s of %s %s", appeal.id, appeal.account, appeal.status)
    manual = gw.policy.manual.get(appeal.account)
    return json_ok(appeal.to_dict() | {"manual": manual.to_dict() if manual is not None else None})
