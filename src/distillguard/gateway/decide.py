"""Step 2 of the request path: decide. The request is folded into the account's live state
(:mod:`scorer`) and the policy (:mod:`policy`) picks allow, modify, throttle or block; the
decision and the risk go into the event. A failing policy engine fails open or closed as
configured, never takes the API down. Enforced blocks and throttles are answered here at once (with
the appeal route when the refusal is a judgement about the account); modifications are applied to
the body forwarded upstream.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from distillguard.events.schema import CHAT_ENDPOINT, EMBEDDINGS_ENDPOINT, RESPONSES_ENDPOINT, PromptView
from distillguard.gateway.appeals import APPEAL_PATH
from distillguard.gateway.fleet.observation import Observation
from distillguard.gateway.keys import KeyInfo
from distillguard.gateway.online import read_request
from distillguard.gateway.openai_errors import openai_error
from distillguard.gateway.policy import Decision
from distillguard.gateway.record import count, record

if TYPE_CHECKING:
    from distillguard.gateway.core import Gateway

log = logging.getLogger("distillguard.gateway")
REASONING_REQUEST_FIELDS = ("reasoning_effort", "reasoning", "include_reasoning", "thinking")


async def decide(gw: Gateway, info: KeyInfo, view: PromptView, ts: float, clock: float | None, ip: str | None,
           user_agent: str | None, event: dict[str, Any]) -> tuple[Decision, Any]:
    """The decision on this request and the scorer's assessment (None when scoring failed)."""
    assessment = None
    try:
        facts = read_request(view, gw.scorer.max_tokens_cap)
        assessment = gw.scorer.observe(info.account, facts, ts, ip=ip, user_agent=user_agent, identity=info.identity,
                                       prompt=view.prompt_text)
        if gw.fleet is None:
            decision = gw.policy.decide(assessment, now=clock)
        else:                         # shared buckets; the observation to the other replicas
            decision = await gw.fleet.decide(assessment, clock, Observation(
                "q", info.account, ts, facts=facts, ip=ip, user_agent=user_agent, identity=info.identity))
    except Exception as exc:  # the policy engine must never take the API down by accident
        gw.metrics.internal_errors.labels(gw.config.policy.fail).inc()
        log.exception("policy evaluation failed for account %s", info.account)
        decision = Decision(codes=["internal_error"], explanation=f"policy evaluation failed ({type(exc).__name__})")
        if gw.config.policy.fail == "closed":
            decision.action = "block"
    event["decision"] = decision.to_dict()
    if decision.action != "allow":
        log.info("decision", extra={"request_id": event["id"], "account": info.account, "action": decision.action,
                                    "codes": decision.codes, "enforced": decision.enforced, "rule": decision.rule})
    if assessment is not None:
        event["risk"] = {"score": round(assessment.verdict.score, 4), "status": assessment.verdict.status,
                         "p_value": assessment.verdict.p_value}
        if assessment.cluster:
            event["risk"]["cluster"] = assessment.cluster
        if assessment.end_user is not None:
            event["risk"]["end_user"] = assessment.end_user
        if assessment.intel is not None:
            event["risk"]["intel"] = round(assessment.intel.score, 4)
    return decision, assessment


def _header_safe(text: str, limit: int = 400) -> str:
    text = text.encode("ascii", "replace").decode("ascii").replace("\r", " ").replace("\n", " ")
    return text[:limit]


def decision_headers(decision: Decision, request_id: str) -> dict[str, str]:
    headers = {"x-request-id": request_id, "x-distillguard-action": decision.action}
    if decision.codes:
        headers["x-distillguard-reason"] = ",".join(decision.codes)
    if decision.explanation:
        headers["x-distillguard-explanation"] = _header_safe(decision.explanation)
    if not decision.enforced and decision.action != "allow":
        headers["x-distillguard-mode"] = "shadow"
    if decision.retry_after is not None and decision.enforced and decision.action == "throttle":
        headers["retry-after"] = str(max(1, int(decision.retry_after + 0.999)))
    return headers


def refuses(decision: Decision) -> bool:
    """True when the request is answered with a block (403) or throttle (429) instead of forwarded."""
    return decision.enforced and decision.action in ("block", "throttle")


def appealable(decision: Decision) -> bool:
    return decision.action == "block" or any(not c.startswith("rate_limit_") for c in decision.codes)


async def refuse(gw: Gateway, info: KeyInfo, event: dict[str, Any], decision: Decision, headers: dict[str, str],
                 t0: float, ts: float) -> Response:
    """Answer an enforced block or throttle (logged first), naming the appeal route where it applies."""
    status = 403 if decision.action == "block" else 429
    code = decision.codes[0] if decision.codes else decision.action
    kind = "rate_limit_exceeded" if status == 429 else "permission_denied"
    event["status"] = status
    event["latency_ms"] = round((time.perf_counter() - t0) * 1000, 3)
    await record(gw, event)
    count(gw, event["endpoint"], status, decision)
    message, extra = decision.explanation or code, decision.to_dict()
    if appealable(decision):     # a judgement about this account, not only a busy rate limit
        gw.refusals[info.account] = {"action": decision.action, "codes": list(decision.codes), "at": ts}
        if gw.fleet is not None:
            gw.fleet.refused(info.account, gw.refusals[info.account])
        headers["x-distillguard-appeal"] = APPEAL_PATH
        headers["x-should-retry"] = "false"      # a judgement, not a busy moment: the SDKs raise at once
        message = message.rstrip()
        if not message.endswith((".", "!", "?")):
            message += "."
        message += f' To appeal, POST {APPEAL_PATH} with this API key and {{"message": "why this is a mistake"}}.'
        extra["appeal"] = {"method": "POST", "path": APPEAL_PATH}
    return openai_error(status, message, code, kind=kind, headers=headers, extra=extra)


def forward_body(body: dict[str, Any], decision: Decision, endpoint: str = CHAT_ENDPOINT) -> dict[str, Any]:
    """The body to send upstream: ``body`` itself, or a copy with an enforced modification applied
    (the Responses API's names where ``endpoint`` is it: ``max_output_tokens``, ``include``)."""
    forward = body
    if decision.enforced and decision.action == "modify":
        forward = dict(body)
        if decision.strip_logprobs:
            for name in ("logprobs", "top_logprobs"):
                forward.pop(name, None)
            if isinstance(forward.get("include"), list):
                forward["include"] = [x for x in forward["include"] if not (isinstance(x, str) and "logprobs" in x)]
        if endpoint == RESPONSES_ENDPOINT:
            if decision.strip_reasoning:
                forward.pop("reasoning", None)
                if isinstance(forward.get("include"), list):
                    forward["include"] = [x for x in forward["include"]
                                          if not (isinstance(x, str) and "reasoning" in x)]
            cap = forward.get("max_output_tokens")
            if decision.max_tokens is not None and not (isinstance(cap, int) and cap <= decision.max_tokens):
                forward["max_output_tokens"] = decision.max_tokens
            return forward
        if endpoint == EMBEDDINGS_ENDPOINT:
            return forward
        if decision.strip_reasoning:
            for name in REASONING_REQUEST_FIELDS:
                forward.pop(name, None)
        if decision.max_tokens is not None:
            for name in ("max_tokens", "max_completion_tokens"):
                value = forward.get(name)
                if isinstance(value, int) and value > decision.max_tokens:
                    forward[name] = decision.max_tokens
            if forward.get("max_tokens") is None and forward.get("max_completion_tokens") is None:
                forward["max_tokens"] = decision.max_tokens
    return forward
