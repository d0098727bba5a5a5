"""Step 3 of the request path (streams): relay the upstream's server-sent events chunk by chunk
(:class:`sse.SSERelay`, reasoning stripped when the decision says so), assemble the answer for the
event, and log it durably before the client sees the end of the stream. A stream the model server
cuts, or the client abandons, still yields exactly one event."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, AsyncIterator

from starlette.responses import Response, StreamingResponse

from distillguard.events.schema import CHAT_ENDPOINT, RESPONSES_ENDPOINT
from distillguard.gateway.forward import kept_headers, strip_reasoning, unreachable, upstream_failure
from distillguard.gateway.openai_errors import JSON
from distillguard.gateway.policy import Decision
from distillguard.gateway.record import charge_answer, count, log_unavailable_sse, record
from distillguard.gateway.sse import ResponsesRelay, SSERelay
from distillguard.gateway.upstream import UpstreamError
from distillguard.gateway.wal import LogWriteError

if TYPE_CHECKING:
    from distillguard.gateway.core import Gateway


async def forward_stream(gw: Gateway, endpoint: str, payload: bytes, up_headers: dict[str, str],
                         event: dict[str, Any], headers: dict[str, str], decision: Decision, assessment: Any,
                         strip: bool, t0: float) -> Response:
    t_up = time.perf_counter()
    try:
        resp = await gw.upstream_client.send("POST", endpoint, payload, up_headers)
    except UpstreamError as exc:
        return await unreachable(gw, event, headers, decision, t0, exc)
    if resp.status_code != 200:
        try:
            content = await resp.read()
        except UpstreamError as exc:
            return await upstream_failure(gw, event, headers, decision, t0, 502, "upstream_unavailable",
                                          f"the model server failed: {exc}")
        if resp.status_code >= 500:
            return await upstream_failure(gw, event, headers, decision, t0, 502, "upstream_error",
                                          f"the model server failed with HTTP {resp.status_code}: "
                                          f"{content[:200].decode('utf-8', 'replace')}")
        event["status"] = resp.status_code
        event["response"] = content[:100_000].decode("utf-8", "replace")
        await record(gw, event)
        count(gw, event["endpoint"], resp.status_code, decision)
        return Response(content, status_code=resp.status_code,
                        media_type=resp.headers.get("content-type", JSON), headers=headers)

    if event["endpoint"] == RESPONSES_ENDPOINT:
        relay: SSERelay = ResponsesRelay(strip_reasoning=strip_reasoning if strip else None)
    else:
        relay = SSERelay(strip_reasoning=strip_reasoning if strip else None, chat=event["endpoint"] == CHAT_ENDPOINT)

    async def body() -> AsyncIterator[bytes]:
        logged = False
        try:
            try:
                async for chunk in resp.iter_raw():
                    out = relay.feed(chunk)
                    if out:
                        yield out
                if not relay.done:
                    relay.error = ("upstream_stream_cut", "the model server ended the stream before [DONE]")
            except UpstreamError as exc:
                relay.error = ("upstream_stream_cut", f"the model server's stream broke off: {exc}")
                gw.metrics.upstream_errors.labels("upstream_stream_cut").inc()
            finally:
                await resp.aclose()
            _finish_stream_event(event, relay, t0, t_up)
            try:
                await record(gw, event)      # durable before the client sees the end of the stream
            except LogWriteError:            # not logged: the stream ends in an error, not [DONE]
                logged = True
                yield log_unavailable_sse()
                return
            logged = True
            charge_answer(gw, event["account"], assessment, event)
            count(gw, event["endpoint"], 200, decision)
            if isinstance(relay, ResponsesRelay) and relay.final is not None:
                gw.responses.remember(relay.final.get("id"), event["account"])
            gw.metrics.latency.labels(event["endpoint"]).observe(time.perf_counter() - t0)
            tail = relay.tail()
            if tail:
                yield tail
        finally:
            if not logged:                   # the client went away mid-stream: still one event
                event.setdefault("error", {"code": "client_disconnected", "message": "the client closed the stream"})
                _finish_stream_event(event, relay, t0, t_up)
                await record(gw, event, wait=False)

    return StreamingResponse(body(), status_code=200, media_type="text/event-stream",
                             headers=headers | kept_headers(resp))


def _finish_stream_event(event: dict[str, Any], relay: SSERelay, t0: float, t_up: float) -> None:
    event["status"] = 200
    event["stream"] = True
    event["response"] = relay.assembled(event.get("model"))
    usage = relay.usage
    if usage:
        event["usage"] = usage
    if relay.error is not None:
        event["error"] = {"code": relay.error[0], "message": relay.error[1]}
    event["upstream_ms"] = round((time.perf_counter() - t_up) * 1000, 3)
    event["latency_ms"] = round((time.perf_counter() - t0) * 1000, 3)
