"""The enforcing gateway: an OpenAI-compatible proxy (Starlette) that logs, scores and acts.

Per request: authenticate the API key → read and validate the body → fold it into the
account's live state and decide (:mod:`scorer`, :mod:`policy`) → answer a block or throttle at
once, or forward (possibly modified) to the upstream over a keep-alive pool
(:mod:`upstream`) → pass the answer back (SSE streams chunk by chunk) → write one event record
to the durable log and wait for its fsync before the client sees the end of the answer.
"""

from __future__ import annotations

import gc
import hmac
import logging
import os
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from distillguard import __version__
from distillguard.detect.baseline import Baseline, load_default
from distillguard.errors import BadInputError, FieldError
from distillguard.events.schema import CHAT_ENDPOINT, COMPLETIONS_ENDPOINT, _check_request, prompt_view
from distillguard.gateway.appeals import APPEAL_PATH, AppealBook, AppealError, check_message
from distillguard.gateway.config import GatewayConfig
from distillguard.gateway.intel import LiveIntel
from distillguard.gateway.keys import KeyInfo, KeyRing, check_entry, key_sha256
from distillguard.gateway.metrics import Metrics
from distillguard.gateway.online import read_request
from distillguard.gateway.policy import Decision, Limits, ManualAction, Policy
from distillguard.gateway.scorer import LiveScorer
from distillguard.gateway.sinks import DuckDBSink, Loader, NullSink, ParquetSink
from distillguard.gateway.sse import SSERelay
from distillguard.gateway.upstream import UpstreamError, make_upstream
from distillguard.gateway.wal import DurableLog

log = logging.getLogger("distillguard.gateway")
_JSON = "application/json"
_REASONING_REQUEST_FIELDS = ("reasoning_effort", "reasoning", "include_reasoning", "thinking")


def openai_error(status: int, message: str, code: str, *, kind: str = "invalid_request_error",
                 param: str | None = None, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> Response:
    body: dict[str, Any] = {"message": message, "type": kind, "param": param, "code": code}
    if extra:
        body["distillguard"] = extra
    return Response(orjson.dumps({"error": body}), status_code=status, media_type=_JSON, headers=headers)


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


def strip_reasoning(obj: Any) -> bool:
    """Remove reasoning fields from a response body or stream chunk, in place; True if any."""
    removed = False
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


def _usage(body: Any) -> dict[str, int] | None:
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    out = {k: v for k, v in usage.items() if k in ("prompt_tokens", "completion_tokens", "total_tokens")
           and isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**62}
    return out or None


class Gateway:
    """Everything one gateway process holds; :func:`build_app` serves it."""

    def __init__(self, config: GatewayConfig, *, baseline: Baseline | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.started = time.time()
        self.baseline = baseline or (Baseline.load(config.baseline) if config.baseline else load_default())
        self.metrics = Metrics()
        self.keys = KeyRing()
        if config.keys is not None:
            self.keys.load_file(config.keys)
        self.state_path = Path(config.log.dir) / "admin-state.json"
        self.allowlist: set[str] = set(config.allowlist)
        self.scorer = LiveScorer(self.baseline, config.fpr, allowlist=self.allowlist)
        self.policy = Policy(config.policy, allowlist=self.allowlist)
        self._load_admin_state()
        self.appeals = AppealBook(Path(config.log.dir) / "appeals.jsonl")
        self.refusals: dict[str, dict[str, Any]] = {}   # account -> its latest enforced block/throttle
        self.log = DurableLog(config.log.dir, segment_bytes=int(config.log.segment_mb * (1 << 20)),
                              sync=config.log.fsync)
        if config.log.sink == "duckdb":
            self.sink = DuckDBSink(config.db)
            with self.sink.lock:
                self.keys.load_store(self.sink.store.api_keys())
        elif config.log.sink == "parquet":
            self.sink = ParquetSink(config.log.parquet_dir, replica=config.log.replica)
        else:
            self.sink = NullSink()
        self.loader = Loader(config.log.dir, self.sink, current_segment=lambda: self.log.current_segment,
                             keep_segments=config.log.keep_segments, interval_s=config.log.load_interval_s)
        self.recovered = self.loader.load_once()     # what an earlier run logged but did not load
        self.metrics.gauges(backlog=self.log.backlog, unloaded_bytes=self.loader.pending_bytes,
                            accounts=lambda: len(self.scorer.accounts), loaded=lambda: self.loader.loaded)
        self.intel: LiveIntel | None = None
        if config.intel.home is not None:    # peers' indicators: identities hashed once, the store read once
            self.intel = LiveIntel(config.intel.home, reload_s=config.intel.reload_s, keys=self.keys.infos)
            self.intel.add_keys(self.keys.infos())
            self.intel.reload()
            self.scorer.intel = self.intel
        self.transport = transport
        self.upstream_client = None
        self.upstream = config.upstream.rstrip("/")
        self.admin_token = config.admin_token or os.environ.get("DISTILLGUARD_ADMIN_TOKEN") or None

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        # Long-lived state (baseline, keys, per-account sketches) holds no reference cycles worth
        # scanning; full collections over it were the gateway's worst latency spikes. Freeze what
        # exists at start and collect the young generation less often.
        self._gc_threshold = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 1000)
        self.upstream_client = make_upstream(self.upstream, max_connections=self.config.max_connections,
                                             connect_timeout=self.config.connect_timeout_s,
                                             timeout=self.config.timeout_s, transport=self.transport)
        self.loader.start()
        if self.intel is not None:
            self.intel.start()

    async def stop(self) -> None:
        if self.upstream_client is not None:
            await self.upstream_client.aclose()
        if self.intel is not None:
            self.intel.stop()
        gc.unfreeze()                 # the process may go on (tests, the demo) and must collect again
        gc.set_threshold(*self._gc_threshold)
        self.log.close()
        self.loader.stop(final_load=True)
        self.sink.close()

    # -- admin state (allowlist, manual actions) survives restarts ------------------------------
    def _load_admin_state(self) -> None:
        try:
            data = orjson.loads(self.state_path.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return
        self.allowlist.update(a for a in data.get("allowlist", []) if isinstance(a, str))
        for account, m in (data.get("manual") or {}).items():
            try:
                self.policy.manual[account] = ManualAction(
                    action=m["action"], reason=m.get("reason", ""), limits=Limits(**(m.get("limits") or {})),
                    set_at=float(m.get("set_at", 0.0)), expires_at=m.get("expires_at"))
            except (KeyError, TypeError, ValueError):
                continue

    def save_admin_state(self) -> None:
        data = {"allowlist": sorted(self.allowlist),
                "manual": {a: m.to_dict() for a, m in self.policy.manual.items()}}
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.state_path)

    # -- helpers ---------------------------------------------------------------------------------
    def authenticate(self, request: Request) -> KeyInfo | None:
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return None
        return self.keys.lookup(auth[7:].strip())

    def client_ip(self, request: Request) -> str | None:
        if self.config.trust_forwarded_for:
            forwarded = request.headers.get("x-forwarded-for")
            if forwarded:
                return forwarded.split(",")[0].strip()
        return request.client.host if request.client else None

    async def read_body(self, request: Request) -> bytes | None:
        """The body, or None when it is larger than ``max_body_bytes`` (checked while reading)."""
        limit = self.config.max_body_bytes
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

    async def record(self, event: dict[str, Any], wait: bool = True) -> None:
        """Write one event durably; with ``wait``, return only once it is on disk."""
        future = self.log.append(orjson.dumps(event, option=orjson.OPT_SERIALIZE_NUMPY))
        if wait:
            await future
        self.metrics.events_logged.inc()

    def count(self, endpoint: str, status: int, decision: Decision | None) -> None:
        self.metrics.requests.labels(endpoint, str(status)).inc()
        if decision is not None and decision.action != "allow":
            for code in decision.codes or ["none"]:
                self.metrics.decisions.labels(decision.action, code, str(decision.enforced).lower()).inc()


def _appealable(decision: Decision) -> bool:
    return decision.action == "block" or any(not c.startswith("rate_limit_") for c in decision.codes)


def _event(ts: float, info: KeyInfo, endpoint: str, body: dict[str, Any], ip: str | None,
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


async def proxy(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    t0 = time.perf_counter()
    ts = time.time()
    endpoint = request.url.path
    info = gw.authenticate(request)
    if info is None:
        gw.metrics.auth_failures.inc()
        gw.count(endpoint, 401, None)
        return openai_error(401, "Incorrect or missing API key. Send 'Authorization: Bearer <key>'.",
                            "invalid_api_key")
    try:
        raw = await gw.read_body(request)
    except ClientDisconnect:
        return Response(status_code=400)
    if raw is None:
        gw.count(endpoint, 400, None)
        return openai_error(400, f"request body larger than {gw.config.max_body_bytes:,} bytes", "request_too_large")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        gw.count(endpoint, 400, None)
        return openai_error(400, f"request body is not valid JSON ({exc})", "invalid_json")
    if not isinstance(body, dict):
        gw.count(endpoint, 400, None)
        return openai_error(400, "request body must be a JSON object", "invalid_request")
    try:
        _check_request(body, endpoint)
    except FieldError as exc:
        gw.count(endpoint, 400, None)
        return openai_error(400, exc.message, "invalid_request", param=exc.field.removeprefix("request."))
    clock = None                      # rate limits run on the monotonic clock, or on replayed time
    if gw.config.trust_client_timestamps:
        replay_ts = request.headers.get("x-distillguard-replay-ts")
        if replay_ts:
            try:
                ts = clock = float(replay_ts)
            except ValueError:
                pass
    ip = gw.client_ip(request)
    user_agent = request.headers.get("user-agent")
    event = _event(ts, info, endpoint, body, ip, user_agent)
    request_id = event["id"]

    view = prompt_view(body)
    assessment = None
    try:
        facts = read_request(view, gw.scorer.max_tokens_cap)
        assessment = gw.scorer.observe(info.account, facts, ts, ip=ip, user_agent=user_agent, identity=info.identity,
                                       prompt=view.prompt_text)
        decision = gw.policy.decide(assessment, now=clock)
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
    headers = decision_headers(decision, request_id)

    if decision.enforced and decision.action in ("block", "throttle"):
        status = 403 if decision.action == "block" else 429
        code = decision.codes[0] if decision.codes else decision.action
        kind = "rate_limit_exceeded" if status == 429 else "permission_denied"
        event["status"] = status
        event["latency_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        await gw.record(event)
        gw.count(endpoint, status, decision)
        message, extra = decision.explanation or code, decision.to_dict()
        if _appealable(decision):     # a judgement about this account, not only a busy rate limit
            gw.refusals[info.account] = {"action": decision.action, "codes": list(decision.codes), "at": ts}
            headers["x-distillguard-appeal"] = APPEAL_PATH
            message += f' To appeal, POST {APPEAL_PATH} with this API key and {{"message": "why this is a mistake"}}.'
            extra["appeal"] = {"method": "POST", "path": APPEAL_PATH}
        return openai_error(status, message, code, kind=kind, headers=headers, extra=extra)

    forward = body
    if decision.enforced and decision.action == "modify":
        forward = dict(body)
        if decision.strip_logprobs:
            for name in ("logprobs", "top_logprobs"):
                forward.pop(name, None)
        if decision.strip_reasoning:
            for name in _REASONING_REQUEST_FIELDS:
                forward.pop(name, None)
        if decision.max_tokens is not None:
            for name in ("max_tokens", "max_completion_tokens"):
                value = forward.get(name)
                if isinstance(value, int) and value > decision.max_tokens:
                    forward[name] = decision.max_tokens
            if forward.get("max_tokens") is None and forward.get("max_completion_tokens") is None:
                forward["max_tokens"] = decision.max_tokens
    up_headers = {"content-type": _JSON, "x-distillguard-account": info.account}
    if decision.cohort:
        up_headers["x-distillguard-cohort"] = decision.cohort
    if gw.config.upstream_api_key:
        up_headers["authorization"] = f"Bearer {gw.config.upstream_api_key}"
    payload = orjson.dumps(forward)
    strip = decision.enforced and decision.strip_reasoning

    if body.get("stream") is True:
        return await _proxy_stream(gw, endpoint, payload, up_headers, event, headers, decision, assessment,
                                   strip, t0)

    t_up = time.perf_counter()
    try:
        resp = await gw.upstream_client.send("POST", endpoint, payload, up_headers)
        content = await resp.read()
    except UpstreamError as exc:
        status_for = 504 if exc.code == "upstream_timeout" else 502
        code = exc.code if exc.code == "upstream_timeout" else "upstream_unavailable"
        return await _upstream_failure(gw, event, headers, decision, t0, status_for, code,
                                       f"the model server failed: {exc}")
    upstream_s = time.perf_counter() - t_up
    status = resp.status_code
    try:
        answer = orjson.loads(content)
    except orjson.JSONDecodeError:
        answer = None
    if status >= 500 or (status == 200 and not isinstance(answer, dict)):
        if status >= 500:
            message = (answer.get("error", {}).get("message") if isinstance(answer, dict)
                       and isinstance(answer.get("error"), dict) else None) or content[:200].decode("utf-8", "replace")
            return await _upstream_failure(gw, event, headers, decision, t0, 502, "upstream_error",
                                           f"the model server failed with HTTP {status}: {message}",
                                           upstream_s=upstream_s)
        return await _upstream_failure(gw, event, headers, decision, t0, 502, "upstream_bad_response",
                                       "the model server answered with malformed JSON", upstream_s=upstream_s)
    if strip and isinstance(answer, dict) and strip_reasoning(answer):
        content = orjson.dumps(answer)
    event["status"] = status
    if isinstance(answer, dict):
        event["response"] = answer
        usage = _usage(answer)
        if usage:
            event["usage"] = usage
    elif content:
        event["response"] = content[:100_000].decode("utf-8", "replace")
    event["upstream_ms"] = round(upstream_s * 1000, 3)
    event["latency_ms"] = round((time.perf_counter() - t0) * 1000, 3)
    await gw.record(event)
    _after(gw, info.account, assessment, event, clock)
    gw.count(endpoint, status, decision)
    gw.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
    gw.metrics.overhead.observe(max(0.0, time.perf_counter() - t0 - upstream_s))
    return Response(content, status_code=status, media_type=resp.headers.get("content-type", _JSON), headers=headers)


def _after(gw: Gateway, account: str, assessment: Any, event: dict[str, Any], clock: float | None = None) -> None:
    """Once answered: output tokens feed harvest, and the token buckets are charged."""
    usage = event.get("usage") or {}
    tokens = usage.get("completion_tokens")
    if tokens is None:
        tokens = len(str(event.get("response") or "")) // 4
    if assessment is not None:
        gw.scorer.add_output(account, int(tokens), assessment.repeat, end_user_key=assessment.end_user_key,
                             end_user_repeat=assessment.end_user_repeat)
    gw.policy.charge_tokens(account, assessment.cluster if assessment else None,
                            float(usage.get("total_tokens") or tokens), now=clock)


async def _upstream_failure(gw: Gateway, event: dict[str, Any], headers: dict[str, str], decision: Decision,
                            t0: float, status: int, code: str, message: str, upstream_s: float | None = None
                            ) -> Response:
    gw.metrics.upstream_errors.labels(code).inc()
    event["status"] = status
    event["error"] = {"code": code, "message": message}
    if upstream_s is not None:
        event["upstream_ms"] = round(upstream_s * 1000, 3)
    event["latency_ms"] = round((time.perf_counter() - t0) * 1000, 3)
    await gw.record(event)
    gw.count(event["endpoint"], status, decision)
    return openai_error(status, message, code, kind="upstream_error", headers=headers)


async def _proxy_stream(gw: Gateway, endpoint: str, payload: bytes, up_headers: dict[str, str],
                        event: dict[str, Any], headers: dict[str, str], decision: Decision, assessment: Any,
                        strip: bool, t0: float) -> Response:
    t_up = time.perf_counter()
    try:
        resp = await gw.upstream_client.send("POST", endpoint, payload, up_headers)
    except UpstreamError as exc:
        status_for = 504 if exc.code == "upstream_timeout" else 502
        code = exc.code if exc.code == "upstream_timeout" else "upstream_unavailable"
        return await _upstream_failure(gw, event, headers, decision, t0, status_for, code,
                                       f"the model server failed: {exc}")
    if resp.status_code != 200:
        try:
            content = await resp.read()
        except UpstreamError as exc:
            return await _upstream_failure(gw, event, headers, decision, t0, 502, "upstream_unavailable",
                                           f"the model server failed: {exc}")
        if resp.status_code >= 500:
            return await _upstream_failure(gw, event, headers, decision, t0, 502, "upstream_error",
                                           f"the model server failed with HTTP {resp.status_code}: "
                                           f"{content[:200].decode('utf-8', 'replace')}")
        event["status"] = resp.status_code
        event["response"] = content[:100_000].decode("utf-8", "replace")
        await gw.record(event)
        gw.count(event["endpoint"], resp.status_code, decision)
        return Response(content, status_code=resp.status_code,
                        media_type=resp.headers.get("content-type", _JSON), headers=headers)

    relay = SSERelay(strip_reasoning=strip_reasoning if strip else None,
                     chat=event["endpoint"] == CHAT_ENDPOINT)

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
            await gw.record(event)           # durable before the client sees the end of the stream
            logged = True
            _after(gw, event["account"], assessment, event)
            gw.count(event["endpoint"], 200, decision)
            gw.metrics.latency.labels(event["endpoint"]).observe(time.perf_counter() - t0)
            tail = relay.tail()
            if tail:
                yield tail
        finally:
            if not logged:                   # the client went away mid-stream: still one event
                event.setdefault("error", {"code": "client_disconnected", "message": "the client closed the stream"})
                _finish_stream_event(event, relay, t0, t_up)
                await gw.record(event, wait=False)

    return StreamingResponse(body(), status_code=200, media_type="text/event-stream", headers=headers)


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


async def models(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    if gw.authenticate(request) is None:
        gw.metrics.auth_failures.inc()
        return openai_error(401, "Incorrect or missing API key.", "invalid_api_key")
    try:
        resp = await gw.upstream_client.send("GET", "/v1/models", b"", {})
        content = await resp.read()
    except UpstreamError as exc:
        gw.metrics.upstream_errors.labels("upstream_unavailable").inc()
        return openai_error(502, f"the model server failed: {exc}", "upstream_unavailable", kind="upstream_error")
    gw.count("/v1/models", resp.status_code, None)
    if resp.status_code >= 500:
        return openai_error(502, f"the model server failed with HTTP {resp.status_code}", "upstream_error",
                            kind="upstream_error")
    return Response(content, status_code=resp.status_code, media_type=resp.headers.get("content-type", _JSON))


async def health(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    ok = gw.log.error is None
    return Response(orjson.dumps({"status": "ok" if ok else "degraded", "version": __version__}),
                    status_code=200 if ok else 503, media_type=_JSON)


async def metrics(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return Response(gw.metrics.render(), media_type="text/plain; version=0.0.4")


# -- admin API --------------------------------------------------------------------------------------
def _admin_denied(gw: Gateway, request: Request) -> Response | None:
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
    return openai_error(401, "missing or wrong admin token", "invalidadmin_token")


async def _json_body(request: Request, limit: int = 1 << 20) -> dict[str, Any] | Response:
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


def _ok(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=_JSON)


def admin(handler):
    async def wrapped(request: Request) -> Response:
        gw: Gateway = request.app.state.gateway
        denied = _admin_denied(gw, request)
        if denied is not None:
            return denied
        return await handler(request, gw)
    return wrapped


@admin
async def admin_status(request: Request, gw: Gateway) -> Response:
    s = gw.log.stats
    flagged = sum(1 for st in list(gw.scorer.accounts.values()) if st.verdict is not None and st.verdict.flagged)
    return _ok({
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
    })


def _account_view(gw: Gateway, account: str) -> dict[str, Any] | None:
    state = gw.scorer.accounts.get(account)
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
    views = [_account_view(gw, a) for a in list(gw.scorer.accounts)]
    views = [v for v in views if v is not None and (v["flagged"] or not only_flagged)]
    views.sort(key=lambda v: (-v["score"], v["account"]))
    return _ok({"accounts": views[:limit], "total": len(views)})


@admin
async def admin_account(request: Request, gw: Gateway) -> Response:
    view = _account_view(gw, request.path_params["account"])
    if view is None:
        return openai_error(404, "no live state for this account", "not_found")
    return _ok(view)


@admin
async def admin_action(request: Request, gw: Gateway) -> Response:
    account = request.path_params["account"]
    data = await _json_body(request)
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
    log.info("admin action %s on %s: %s", action, account, reason)
    return _ok({"account": account, "manual": gw.policy.manual[account].to_dict() if account in gw.policy.manual
                else None})


@admin
async def admin_allowlist(request: Request, gw: Gateway) -> Response:
    return _ok({"allowlist": sorted(gw.allowlist)})


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
    return _ok({"allowlist": sorted(gw.allowlist)})


@admin
async def admin_clusters(request: Request, gw: Gateway) -> Response:
    return _ok({"clusters": gw.scorer.clusters()})


@admin
async def admin_keys(request: Request, gw: Gateway) -> Response:
    data = await _json_body(request)
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
        return _ok({"revoked": removed})
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
    return _ok({"account": info.account, "key_id": info.key_id}, status=201)


def _intel_view(gw: Gateway, limit: int = 100) -> dict[str, Any]:
    evidence = sorted(list(gw.intel.evidence.values()), key=lambda e: (-e.score, e.account))
    return gw.intel.status() | {"accounts": [{"account": e.account, **e.to_dict()} for e in evidence[:limit]]}


@admin
async def admin_intel(request: Request, gw: Gateway) -> Response:
    if gw.intel is None:
        return openai_error(404, "no peer intel: start the gateway with --intel HOME or [intel] home", "not_found")
    return _ok(_intel_view(gw))


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
    return _ok(_intel_view(gw))


# -- appeals ----------------------------------------------------------------------------------------
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
    view = _account_view(gw, account)
    return {"appealable": (manual is not None and manual.action in ("block", "throttle")) or refusal is not None,
            "manual": manual.to_dict() if manual is not None else None, "refusal": refusal,
            "flagged": bool(view and view["flagged"]), "score": view["score"] if view else None,
            "reasons": [r["detail"] for r in view["reasons"][:3]] if view else []}


async def appeal_file(request: Request) -> Response:
    """POST /v1/appeals with the user's own API key: {"message": "..."}."""
    gw: Gateway = request.app.state.gateway
    info = gw.authenticate(request)
    if info is None:
        gw.metrics.auth_failures.inc()
        return openai_error(401, "Incorrect or missing API key. Send 'Authorization: Bearer <key>'.",
                            "invalid_api_key")
    data = await _json_body(request, APPEAL_BODY_BYTES)
    if isinstance(data, Response):
        return data
    try:
        check_message(data.get("message"))
        appeal = await run_in_threadpool(gw.appeals.file, info.account, info.key_id, data.get("message"),
                                         _standing(gw, info.account))
    except AppealError as exc:
        return _appeal_error(exc, public=True)
    log.info("appeal %s filed by %s", appeal.id, info.account)
    return _ok(appeal.public(), status=201)


async def appeal_list(request: Request) -> Response:
    """GET /v1/appeals: the caller's own appeals, newest first, with the analysts' answers."""
    gw: Gateway = request.app.state.gateway
    info = gw.authenticate(request)
    if info is None:
        gw.metrics.auth_failures.inc()
        return openai_error(401, "Incorrect or missing API key.", "invalid_api_key")
    return _ok({"object": "list", "data": [a.public() for a in gw.appeals.of_account(info.account)]})


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
    return _ok({"appeals": [a.to_dict() for a in rows[:limit]], "total": len(rows), "counts": gw.appeals.counts()})


@admin
async def admin_appeal(request: Request, gw: Gateway) -> Response:
    appeal = gw.appeals.get(request.path_params["appeal"])
    if appeal is None:
        return openai_error(404, f"no appeal {request.path_params['appeal']!r}", "not_found")
    return _ok(appeal.to_dict())


@admin
async def admin_appeal_decision(request: Request, gw: Gateway) -> Response:
    """{"decision": "uphold" | "lift", "note": "...", "analyst": "..."}; lift removes the block."""
    data = await _json_body(request, APPEAL_BODY_BYTES)
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
    log.info("appeal %s of %s %s", appeal.id, appeal.account, appeal.status)
    manual = gw.policy.manual.get(appeal.account)
    return _ok(appeal.to_dict() | {"manual": manual.to_dict() if manual is not None else None})


def build_app(gateway: Gateway) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette):
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    routes = [
        Route(CHAT_ENDPOINT, proxy, methods=["POST"]),
        Route(COMPLETIONS_ENDPOINT, proxy, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route(APPEAL_PATH, appeal_file, methods=["POST"]),
        Route(APPEAL_PATH, appeal_list, methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/admin/status", admin_status, methods=["GET"]),
        Route("/admin/accounts", admin_accounts, methods=["GET"]),
        Route("/admin/accounts/{account}", admin_account, methods=["GET"]),
        Route("/admin/accounts/{account}/action", admin_action, methods=["POST"]),
        Route("/admin/allowlist", admin_allowlist, methods=["GET"]),
        Route("/admin/allowlist/{account}", admin_allowlist_change, methods=["PUT", "DELETE"]),
        Route("/admin/clusters", admin_clusters, methods=["GET"]),
        Route("/admin/keys", admin_keys, methods=["POST"]),
        Route("/admin/keys/revoke", admin_keys, methods=["POST"]),
        Route("/admin/appeals", admin_appeals, methods=["GET"]),
        Route("/admin/appeals/{appeal}", admin_appeal, methods=["GET"]),
        Route("/admin/appeals/{appeal}/decision", admin_appeal_decision, methods=["POST"]),
        Route("/admin/intel", admin_intel, methods=["GET"]),
        Route("/admin/intel/reload", admin_intel_reload, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.gateway = gateway
    return app
