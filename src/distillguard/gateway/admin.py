"""The admin API (/admin/..., the admin token only): status, live accounts and clusters with their
reasons, manual actions, the allowlist, API keys, peers' intel. Routes: :data:`app.ROUTES`; a new
handler is ``@admin async def handler(request, gw)`` plus one line there."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from distillguard import __version__
from distillguard.errors import BadInputError
from distillguard.gateway.auth import admin_denied
from distillguard.gateway.core import Gateway
from distillguard.gateway.keys import check_entry, key_sha256
from distillguard.gateway.openai_errors import json_ok, openai_error, read_json_object
from distillguard.gateway.policy import Limits, ManualAction
from distillguard.gateway.sinks import DuckDBSink

log = logging.getLogger("distillguard.gateway")


def admin(handler):
    async def wrapped(request: Request) -> Response:
        gw: Gateway = request.app.state.gateway
        denied = admin_denied(gw, request)
        if denied is not None:
            return denied
        return await handler(request, gw)
    return wrapped


@admin
async def admin_status(request: Request, gw: Gateway) -> Response:
    s = gw.log.stats
    flagged = sum(1 for st in list(gw.scorer.accounts.values()) if st.verdict is not None and st.verdict.flagged)
    return json_ok({
        "version": __version__, "uptime_s": round(time.time() - gw.started, 1), "upstream": gw.upstream,
        "mode": gw.config.policy.mode, "fail": gw.config.policy.fail, "fpr": gw.config.fpr,
        "accounts_tracked": len(gw.scorer.accounts), "accounts_flagged": flagged,
        "clusters": len(gw.scorer.clusters()), "allowlist": sorted(gw.allowlist),
        "manual_actions": {a: m.to_dict() for a, m in gw.policy.manual.items()},
        "log": {"dir": str(gw.config.log.dir), "appended": s.appended, "commits": s.commits, "bytes": s.bytes,
                "torn_tails_skipped": gw.loader.torn,
                "backlog_records": gw.log.backlog(), "unloaded_bytes": gw.loader.pending_bytes(),
                "loaded": gw.loader.loaded, "recovered_at_start": gw.recovered, "sink": gw.sink.name,
                "loader_error": gw.loader.error, "log_error": None if gw.log.error is None else str(gw.log.error)},
        "keys": len(gw.keys), "intel": gw.intel.status() if gw.intel is not None else None,
        "state": gw.fleet.status() | {"loader": gw.loader.status()} if gw.fleet is not None
        else {"backend": "embedded", "mode": "local"},
    })


def account_view(gw: Gateway, account: str) -> dict[str, Any] | None:
    # A fleet replica folds peers' queries without judging them: judge now (when due).
    state = gw.scorer.judged(account) if gw.fleet is not None else gw.scorer.accounts.get(account)
    if state is None:
        return None
    v = state.verdict
    allowlisted = account in gw.allowlist
    intel = gw.intel.evidence.get(account) if gw.intel is not None else None
    score = v.score if v else 0.0
    reasons = [r.to_dict() for r in v.reasons] if v else []
    intel_flagged = False
    if intel is not None:      # as in the scan: the larger score, intel's reasons first, never lower
        score = max(score, intel.score)
        reasons = intel.reasons() + reasons
        intel_flagged = intel.flagged and not allowlisted
    view = {"account": account, "queries": state.queries, "status": v.status if v else "insufficient_data",
            "flagged": bool(v and v.flagged) or intel_flagged, "elevated": state.elevated, "score": round(score, 4),
            "p_value": v.p_value if v else 1.0, "cluster": gw.scorer.cluster_name(account),
            "allowlisted": allowlisted,
            "manual": gw.policy.manual[account].to_dict() if account in gw.policy.manual else None,
            "reasons": reasons}
    if intel is not None:
        view["intel"] = intel.to_dict() | {"flagged": intel_flagged}
    return view


@admin
async def admin_accounts(request: Request, gw: Gateway) -> Response:
    only_flagged = request.query_params.get("flagged") in ("1", "true", "yes")
    try:
        limit = max(1, min(10_000, int(request.query_params.get("limit", "100"))))
    except ValueError:
        return openai_error(400, "limit must be an integer", "invalid_request", param="limit")
    views = [account_view(gw, a) for a in list(gw.scorer.accounts)]
    views = [v for v in views if v is not None and (v["flagged"] or not only_flagged)]
    views.sort(key=lambda v: (-v["score"], v["account"]))
    return json_ok({"accounts": views[:limit], "total": len(views)})


@admin
async def admin_account(request: Request, gw: Gateway) -> Response:
    view = account_view(gw, request.path_params["account"])
    if view is None:
        return openai_error(404, "no live state for this account", "not_found")
    return json_ok(view)


@admin
async def admin_action(request: Request, gw: Gateway) -> Response:
    account = request.path_params["account"]
    data = await read_json_object(request)
    if isinstance(data, Response):
        return data
    action = data.get("action")
    if action not in ("block", "throttle", "allow", "clear"):
        return openai_error(400, "action must be block, throttle, allow or clear", "invalid_request", param="action")
    reason = data.get("reason") or "no reason given"
    if not isinstance(reason, str):
        return openai_error(400, "reason must be a string", "invalid_request", param="reason")
    ttl = data.get("ttl_s")
    if ttl is not None and (not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or ttl <= 0):
        return openai_error(400, "ttl_s must be a positive number", "invalid_request", param="ttl_s")
    if action == "clear":
        gw.policy.manual.pop(account, None)
    else:
        limits = Limits()
        if action == "throttle":
            rpm, tpm = data.get("requests_per_minute"), data.get("tokens_per_minute")
            for name, value in (("requests_per_minute", rpm), ("tokens_per_minute", tpm)):
                if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0):
                    return openai_error(400, f"{name} must be a positive number", "invalid_request", param=name)
            if rpm is None and tpm is None:
                return openai_error(400, "throttle needs requests_per_minute or tokens_per_minute", "invalid_request")
            limits = Limits(rpm, tpm)
        now = time.time()
        gw.policy.manual[account] = ManualAction(action=action, reason=reason, limits=limits, set_at=now,
                                                 expires_at=now + ttl if ttl else None)
    gw.refusals.pop(account, None)    # what was refused before no longer stands as it was
    gw.save_admin_state()
    if gw.fleet is not None:
        m = gw.policy.manual.get(account)
        gw.fleet.share("manual", account, m.to_dict() if m is not None else None)
    log.info("admin action %s on %s: %s", action, account, reason)
    return json_ok({"account": account, "manual": gw.policy.manual[account].to_dict() if account in gw.policy.manual
                else None})


@admin
async def admin_allowlist(request: Request, gw: Gateway) -> Response:
    return json_ok({"allowlist": sorted(gw.allowlist)})


@admin
async def admin_allowlist_change(request: Request, gw: Gateway) -> Response:
    account = request.path_params["account"]
    if request.method == "PUT":
        gw.allowlist.add(account)
    else:
        gw.allowlist.discard(account)
    for state in (gw.scorer.accounts.get(account),):
        if state is not None:
            state.verdict, state.scored_at = None, 0.0     # judge afresh with the new standing
    gw.save_admin_state()
    if gw.fleet is not None:
        gw.fleet.share("allow", account, True if account in gw.allowlist else None)
    return json_ok({"allowlist": sorted(gw.allowlist)})


@admin
async def admin_clusters(request: Request, gw: Gateway) -> Response:
    return json_ok({"clusters": gw.scorer.clusters()})


@admin
async def admin_keys(request: Request, gw: Gateway) -> Response:
    data = await read_json_object(request)
    if isinstance(data, Response):
        return data
    key = data.get("key")
    if not isinstance(key, str) or len(key) < 8:
        return openai_error(400, "key must be a string of at least 8 characters", "invalid_request", param="key")
    if request.url.path.endswith("/revoke"):
        removed = gw.keys.revoke(key)
        if isinstance(gw.sink, DuckDBSink):
            with gw.sink.lock:
                gw.sink.store.revoke_api_key(key_sha256(key))
        if gw.fleet is not None:
            gw.fleet.share("key", key_sha256(key), None)
        return json_ok({"revoked": removed})
    try:
        account, identity = check_entry({k: v for k, v in data.items() if k != "key"}, "request body")
    except Exception as exc:  # BadInputError names the field
        return openai_error(400, str(exc), "invalid_request", param=getattr(exc, "field", None))
    info = gw.keys.add(key, account, identity)
    if gw.intel is not None:
        gw.intel.add_keys([info])
    if isinstance(gw.sink, DuckDBSink):
        with gw.sink.lock:
            gw.sink.store.put_api_key(key_sha256(key), account, orjson.dumps(identity).decode() if identity else None)
    if gw.fleet is not None:
        gw.fleet.share("key", key_sha256(key), {"account": account, "identity": identity})
    return json_ok({"account": info.account, "key_id": info.key_id}, status=201)


def _intel_view(gw: Gateway, limit: int = 100) -> dict[str, Any]:
    evidence = sorted(list(gw.intel.evidence.values()), key=lambda e: (-e.score, e.account))
    return gw.intel.status() | {"accounts": [{"account": e.account, **e.to_dict()} for e in evidence[:limit]]}


@admin
async def admin_intel(request: Request, gw: Gateway) -> Response:
    if gw.intel is None:
        return openai_error(404, "no peer intel: start the gateway with --intel HOME or [intel] home", "not_found")
    return json_ok(_intel_view(gw))


@admin
async def admin_intel_reload(request: Request, gw: Gateway) -> Response:
    """Re-read the intel home now (new imports, revocations, peers' trust) without a restart."""
    if gw.intel is None:
        return openai_error(404, "no peer intel: start the gateway with --intel HOME or [intel] home", "not_found")
    try:
        await run_in_threadpool(gw.intel.reload)
    except BadInputError as exc:
        gw.intel.error = str(exc)
        return openai_error(503, f"intel reload failed, the previous indicators stay in force: {exc}",
                            "intel_unavailable", kind="server_error")
    log.info("intel reloaded by the admin API")
    return json_ok(_intel_view(gw))
