"""Last step of the request path: the event record. One event per request (schema:
:mod:`distillguard.events.schema`) is created when the request is read, filled in as it goes, and
written to the durable log (fsync awaited before the client sees the end of the answer); then the
answer's tokens are charged to the account (harvest signals, token buckets) and metrics counted."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import orjson

from starlette.responses import Response

from distillguard.gateway.keys import KeyInfo
from distillguard.gateway.openai_errors import openai_error
from distillguard.gateway.policy import Decision

if TYPE_CHECKING:
    from distillguard.gateway.core import Gateway


def new_event(ts: float, info: KeyInfo, endpoint: str, body: dict[str, Any], ip: str | None,
              user_agent: str | None) -> dict[str, Any]:
    event: dict[str, Any] = {"id": uuid.uuid4().hex, "ts": ts, "account": info.account, "key": info.key_id,
                             "endpoint": endpoint, "request": body}
    model = body.get("model")
    if isinstance(model, str):
        event["model"] = model
    if ip:
        event["ip"] = ip
    if user_agent:
        event["user_agent"] = user_agent
    if info.identity:
        event["identity"] = info.identity
    return event


async def record(gw: Gateway, event: dict[str, Any], wait: bool = True) -> None:
    """Write one event durably; with ``wait``, return only once it is on disk."""
    data = orjson.dumps(event, option=orjson.OPT_SERIALIZE_NUMPY)
    # The tree's leaf is added by the log's writer once this record is on disk, in log order: a
    # failed write (full disk: 503) leaves no leaf behind (docs/evidence.md).
    future = gw.log.append(data, gw.tree.prepare(event) if gw.tree is not None else None)
    if wait:
        await future
    gw.metrics.events_logged.inc()


def log_unavailable(gw: Gateway, endpoint: str) -> Response:
    """503 in the OpenAI format while the log cannot store records: nothing is answered unlogged."""
    count(gw, endpoint, 503, None)
    return openai_error(503, "the gateway cannot log requests right now (its event log is not writable); "
                             "retry shortly", "log_unavailable", kind="server_error",
                        headers={"retry-after": str(max(1, int(gw.log.retry_s + 0.999)))})


def log_unavailable_sse() -> bytes:
    """The end of a stream whose event could not be logged: an OpenAI error event, no [DONE]."""
    error = {"message": "the gateway could not log this answer (its event log is not writable); retry shortly",
             "type": "server_error", "param": None, "code": "log_unavailable"}
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n"


def count(gw: Gateway, endpoint: str, status: int, decision: Decision | None) -> None:
    gw.metrics.requests.labels(endpoint, str(status)).inc()
    if decision is not None:
        codes = decision.codes or ["none"]
        gw.metrics.decisions.labels(decision.action, codes[0], str(decision.enforced).lower()).inc()
        if decision.codes:
            for code in decision.codes:
                gw.metrics.reasons.labels(code).inc()


def answers_in(event: dict[str, Any]) -> int:
    """Answers the request asked for (its ``n``; 1 when absent or not a positive integer)."""
    request = event.get("request")
    n = request.get("n") if isinstance(request, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else 1


def charge_answer(gw: Gateway, account: str, assessment: Any, event: dict[str, Any],
                  clock: float | None = None) -> None:
    """Once answered: output tokens feed harvest, and the token buckets are charged."""
    usage = event.get("usage") or {}
    tokens = usage.get("completion_tokens")
    if tokens is None:
        tokens = len(str(event.get("response") or "")) // 4
    if assessment is not None:
        gw.scorer.add_output(account, int(tokens), assessment.repeat, end_user_key=assessment.end_user_key,
                             end_user_repeat=assessment.end_user_repeat, prompt_chars=assessment.prompt_chars,
                             probe=assessment.probe, elicited=assessment.elicited, choices=answers_in(event))
    gw.policy.charge_tokens(account, assessment.cluster if assessment else None,
                            float(usage.get("total_tokens") or tokens), now=clock)
    if gw.fleet is not None:
        gw.fleet.answered(account, assessment, int(tokens), float(usage.get("total_tokens") or tokens), clock)
