"""Step 3 of the request path (plain answers): send the request upstream over the keep-alive pool
(:mod:`upstream`), read the answer, strip what the decision removes, log and pass it back. Upstream
failures become OpenAI errors (502/504) and are logged too. Streams: :mod:`streaming`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson
from starlette.responses import Response

from distillguard.events.schema import nesting_exceeds
from distillguard.gateway.keys import KeyInfo
from distillguard.gateway.openai_errors import JSON, openai_error
from distillguard.gateway.policy import Decision
from distillguard.gateway.record import charge_answer, count, record
from distillguard.gateway.sse import _chat_usage
from distillguard.gateway.upstream import UpstreamError

if TYPE_CHECKING:
    from distillguard.gateway.core import Gateway


def upstream_headers(gw: Gateway, info: KeyInfo, decision: Decision) -> dict[str, str]:
    headers = {"content-type": JSON, "x-distillguard-account": info.account}
    if decision.cohort:
        headers["x-distillguard-cohort"] = decision.cohort
    if decision.enforced and decision.shape:
        headers["x-distillguard-shape"] = decision.shape
    if gw.config.upstream_api_key:
        headers["authorization"] = f"Bearer {gw.config.upstream_api_key}"
    return headers


def strip_reasoning(obj: Any) -> bool:
    """Remove reasoning fields from a response body or stream chunk, in place; True if any
    (chat and completions: reasoning fields of messages and deltas; Responses: reasoning items)."""
    removed = False
    output = obj.get("output") if isinstance(obj, dict) and obj.get("object") == "response" else None
    if isinstance(output, list):
        kept = [item for item in output if not (isinstance(item, dict) and item.get("type") == "reasoning")]
        if len(kept) != len(output):
            obj["output"] = kept
            removed = True
    choices = obj.get("choices") if isinstance(obj, dict) else None
    if isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            for part in ("message", "delta"):
                msg = choice.get(part)
                if isinstance(msg, dict):
                    for name in ("reasoning_content", "reasoning", "thinking"):
                        if name in msg:
                            del msg[name]
                            removed = True
    return removed


def usage_of(body: Any) -> dict[str, int] | None:
    """Token counts in the chat names (Responses' input/output tokens renamed)."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    return _chat_usage(usage) or None


def kept_headers(resp: Any) -> dict[str, str]:
    """The upstream's own request id (as ``x-upstream-request-id``) and processing time, for the client."""
    out = {}
    rid = resp.headers.get("x-request-id")
    if rid:
        out["x-upstream-request-id"] = rid
    ms = resp.headers.get("openai-processing-ms")
    if ms:
        out["openai-processing-ms"] = ms
    return out


async def upstream_failure(gw: Gateway, event: dict[str, Any], headers: dict[str, str], decision: Decision,
                           t0: float, status: int, code: str, message: str, upstream_s: float | None = None
                           ) -> Response:
    gw.metrics.upstream_errors.labels(code).inc()
    event["status"] = status
    event["error"] = {"code": code, "message": message}
    if upstream_s is not None:
        event["upstream_ms"] = round(upstream_s * 1000, 3)
    event["latency_ms"] = round((time.perf_counter() - t0) * 1000, 3)
    await record(gw, event)
    count(gw, event["endpoint"], status, decision)
    return openai_error(status, message, code, kind="upstream_error", headers=headers)


async def unreachable(gw: Gateway, event: dict[str, Any], headers: dict[str, str], decision: Decision, t0: float,
                      exc: UpstreamError) -> Response:
    """The model server could not be reached or timed out (504 for a timeout, else 502)."""
    status_for = 504 if exc.code == "upstream_timeout" else 502
    code = exc.code if exc.code == "upstream_timeout" else "upstream_unavailable"
    return await upstream_failure(gw, event, headers, decision, t0, status_for, code, f"the model server failed: {exc}")


async def forward(gw: Gateway, info: KeyInfo, endpoint: str, payload: bytes, up_headers: dict[str, str],
                  event: dict[str, Any], headers: dict[str, str], decision: Decision, assessment: Any, strip: bool,
                  t0: float, clock: float | None) -> Response:
    t_up = time.perf_counter()
    try:
        resp = await gw.upstream_client.send("POST", endpoint, payload, up_headers)
        content = await resp.read()
    except UpstreamError as exc:
        return await unreachable(gw, event, headers, decision, t0, exc)
    upstream_s = time.perf_counter() - t_up
    status = resp.status_code
    try:
        answer = orjson.loads(content)
    except orjson.JSONDecodeError:
        answer = None
    if status == 200 and nesting_exceeds(answer):    # could not be logged (nor stored): not passed on
        answer = None
    if status >= 500 or (status == 200 and not isinstance(answer, dict)):
        if status >= 500:
            message = (answer.get("error", {}).get("message") if isinstance(answer, dict)
                       and isinstance(answer.get("error"), dict) else None) or content[:200].decode("utf-8", "replace")
            return await upstream_failure(gw, event, headers, decision, t0, 502, "upstream_error",
                                          f"the model server failed with HTTP {status}: {message}",
                                          upstream_s=upstream_s)
        return await upstream_failure(gw, event, headers, decision, t0, 502, "upstream_bad_response",
                                      "the model server answered with malformed JSON", upstream_s=upstream_s)
    if strip and isinstance(answer, dict) and strip_reasoning(answer):
        content = orjson.dumps(answer)
    event["status"] = status
    if isinstance(answer, dict):
        event["response"] = answer
        usage = usage_of(answer)
        if usage:
            event["usage"] = usage
    elif content:
        event["response"] = content[:100_000].decode("utf-8", "replace")
    event["upstream_ms"] = round(upstream_s * 1000, 3)
    event["latency_ms"] = round((time.perf_counter() - t0) * 1000, 3)
    await record(gw, event)
    charge_answer(gw, info.account, assessment, event, clock)
    count(gw, endpoint, status, decision)
    if isinstance(answer, dict) and answer.get("object") == "response":
        gw.responses.remember(answer.get("id"), info.account)
    gw.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
    gw.metrics.overhead.observe(max(0.0, time.perf_counter() - t0 - upstream_s))
    return Response(content, status_code=status, media_type=resp.headers.get("content-type", JSON),
                    headers=headers | kept_headers(resp))
