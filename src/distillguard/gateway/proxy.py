"""The OpenAI endpoints' request path, start to end:

1. authenticate the API key (:mod:`auth`), read and validate the body;
2. decide (:mod:`decide`): fold the request into the account's live state, let the policy act;
   an enforced block or throttle is answered at once;
3. proxy, possibly modified, to the upstream: plain answers (:mod:`forward`), SSE streams chunk by
   chunk (:mod:`streaming`);
4. log (:mod:`record`): one event per request, durable before the client sees the end of the answer.

A new OpenAI endpoint that carries prompts is one more route to :func:`proxy` in :mod:`app` (and its
request shape in :mod:`distillguard.events.schema`).
"""

from __future__ import annotations

import time
import uuid

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from distillguard.errors import FieldError
from distillguard.events.schema import RESPONSES_ENDPOINT, _check_request, prompt_view
from distillguard.gateway.auth import authenticate, client_ip, read_body
from distillguard.gateway.core import Gateway
from distillguard.gateway.decide import decide, decision_headers, forward_body, refuse, refuses
from distillguard.gateway.forward import forward, kept_headers, upstream_headers
from distillguard.gateway.openai_errors import JSON, openai_error
from distillguard.gateway.record import count, log_unavailable, new_event
from distillguard.gateway.streaming import forward_stream
from distillguard.gateway.upstream import UpstreamError
from distillguard.gateway.wal import LogWriteError


async def _read_json_request(gw: Gateway, request: Request, endpoint: str) -> dict | Response:
    """The request body as a valid request object for ``endpoint``, or the error to answer with."""
    try:
        raw = await read_body(gw, request)
    except ClientDisconnect:
        return Response(status_code=400)
    if raw is None:
        count(gw, endpoint, 400, None)
        return openai_error(400, f"request body larger than {gw.config.max_body_bytes:,} bytes", "request_too_large")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        count(gw, endpoint, 400, None)
        return openai_error(400, f"request body is not valid JSON ({exc})", "invalid_json")
    if not isinstance(body, dict):
        count(gw, endpoint, 400, None)
        return openai_error(400, "request body must be a JSON object", "invalid_request")
    try:
        _check_request(body, endpoint)
    except FieldError as exc:
        count(gw, endpoint, 400, None)
        return openai_error(400, exc.message, "invalid_request", param=exc.field.removeprefix("request."))
    return body


async def proxy(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    t0 = time.perf_counter()
    ts = time.time()
    endpoint = request.scope["path"]     # (= request.url.path on these routes, without building a URL)
    info = authenticate(gw, request)
    if info is None:
        return no_key(gw, endpoint)
    if gw.log.failing():              # fail closed: no answer that cannot be logged
        return log_unavailable(gw, endpoint)
    body = await _read_json_request(gw, request, endpoint)
    if isinstance(body, Response):
        return body
    try:
        return await _answer(gw, request, info, endpoint, body, t0, ts)
    except LogWriteError:             # the record of this exchange failed: it is not answered
        return log_unavailable(gw, endpoint)


async def _answer(gw: Gateway, request: Request, info, endpoint: str, body: dict, t0: float, ts: float) -> Response:
    clock = None                      # rate limits run on the monotonic clock, or on replayed time
    if gw.config.trust_client_timestamps:
        replay_ts = request.headers.get("x-distillguard-replay-ts")
        if replay_ts:
            try:
                ts = clock = float(replay_ts)
            except ValueError:
                pass
    ip = client_ip(gw, request)
    user_agent = request.headers.get("user-agent")
    event = new_event(ts, info, endpoint, body, ip, user_agent)
    if endpoint == RESPONSES_ENDPOINT and gw.responses.foreign(body.get("previous_response_id"), info.account):
        count(gw, endpoint, 404, None)     # another account's conversation: as unknown as any other id
        return openai_error(404, f"Previous response with id '{body['previous_response_id']}' not found.",
                            "previous_response_not_found", param="previous_response_id",
                            headers={"x-request-id": event["id"], "x-distillguard-action": "block"})

    decision, assessment = await decide(gw, info, prompt_view(body), ts, clock, ip, user_agent, event)
    headers = decision_headers(decision, event["id"])
    if refuses(decision):
        return await refuse(gw, info, event, decision, headers, t0, ts)

    payload = orjson.dumps(forward_body(body, decision, endpoint))
    up_headers = upstream_headers(gw, info, decision)
    strip = decision.enforced and decision.strip_reasoning
    if body.get("stream") is True:
        return await forward_stream(gw, endpoint, payload, up_headers, event, headers, decision, assessment, strip, t0)
    return await forward(gw, info, endpoint, payload, up_headers, event, headers, decision, assessment, strip, t0,
                         clock)


def no_key(gw: Gateway, endpoint: str) -> Response:
    """401 for a missing or unknown API key (with the request id and action headers every answer has)."""
    gw.metrics.auth_failures.inc()
    count(gw, endpoint, 401, None)
    return openai_error(401, "Incorrect or missing API key. Send 'Authorization: Bearer <key>'.", "invalid_api_key",
                        headers={"x-request-id": uuid.uuid4().hex, "x-distillguard-action": "block"})


async def models(request: Request) -> Response:
    """GET /v1/models and /v1/models/{id}: the upstream's answer, with the gateway's headers."""
    gw: Gateway = request.app.state.gateway
    path = request.url.path
    if authenticate(gw, request) is None:
        return no_key(gw, path)
    headers = {"x-request-id": uuid.uuid4().hex, "x-distillguard-action": "allow"}
    up = {"authorization": f"Bearer {gw.config.upstream_api_key}"} if gw.config.upstream_api_key else {}
    try:
        resp = await gw.upstream_client.send("GET", path, b"", up)
        content = await resp.read()
    except UpstreamError as exc:
        gw.metrics.upstream_errors.labels("upstream_unavailable").inc()
        return openai_error(502, f"the model server failed: {exc}", "upstream_unavailable", kind="upstream_error",
                            headers=headers)
    count(gw, "/v1/models", resp.status_code, None)
    if resp.status_code >= 500:
        return openai_error(502, f"the model server failed with HTTP {resp.status_code}", "upstream_error",
                            kind="upstream_error", headers=headers)
    return Response(content, status_code=resp.status_code, media_type=resp.headers.get("content-type", JSON),
                    headers=headers | kept_headers(resp))
