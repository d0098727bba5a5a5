"""The gateway over real HTTP on loopback: proxying, streaming, errors, admin API, policy, metrics."""

from __future__ import annotations

import time

import duckdb
import httpx
import orjson
import pytest

from distillguard.gateway.server import ServerThread, free_port
from distillguard.serve.fixed import DEFAULT_TEXT
from gateway_support import ADMIN, FaultyUpstream, running_gateway

ALICE = {"authorization": "Bearer sk-alice-0001"}
BOB = {"authorization": "Bearer sk-bob-00002"}
ADMIN_H = {"authorization": f"Bearer {ADMIN}"}


def chat(content: str = "Hello, how are you today?", model: str = "ok", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


@pytest.fixture(scope="module")
def upstream():
    app = FaultyUpstream()
    with ServerThread(app) as server:
        server.app = app
        yield server


def stored_events(db) -> list[dict]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        cols = [c[0] for c in con.execute("SELECT * FROM events LIMIT 0").description]
        return [dict(zip(cols, row)) for row in con.execute("SELECT * FROM events ORDER BY ts").fetchall()]
    finally:
        con.close()


def test_chat_is_proxied_logged_and_loaded(tmp_path, upstream):
    with running_gateway(tmp_path, upstream.url) as (gw, url):
        r = httpx.post(url + "/v1/chat/completions", json=chat(), headers=ALICE)
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == DEFAULT_TEXT
        assert r.headers["x-distillguard-action"] == "allow"
        request_id = r.headers["x-request-id"]
        assert upstream.app.headers[-1]["x-distillguard-cohort"].startswith("cohort-")
    events = stored_events(tmp_path / "events.duckdb")
    assert [e["id"] for e in events] == [request_id]
    ev = events[0]
    assert ev["account"] == "alice" and ev["status"] == 200 and ev["prompt_text"] == "Hello, how are you today?"
    assert ev["completion_tokens"] == len(DEFAULT_TEXT.split())
    assert ev["key"].startswith("key-") and "sk-alice" not in ev["key"]
    assert ev["ip"] == "127.0.0.1"
    extra = orjson.loads(ev["extra"])
    assert extra["decision"]["action"] == "allow" and extra["latency_ms"] >= extra["upstream_ms"] >= 0


def test_completions_and_models(tmp_path, upstream):
    with running_gateway(tmp_path, upstream.url) as (gw, url):
        r = httpx.post(url + "/v1/completions", json={"model": "ok", "prompt": "Once upon a time"}, headers=ALICE)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == DEFAULT_TEXT
        m = httpx.get(url + "/v1/models", headers=ALICE)
        assert m.status_code == 200 and m.json()["data"][0]["id"] == "fixed-model"
        assert httpx.get(url + "/v1/models").status_code == 401
    events = stored_events(tmp_path / "events.duckdb")
    assert [e["endpoint"] for e in events] == ["/v1/completions"]


def test_stream_passes_through_chunk_by_chunk(tmp_path, upstream):
    with running_gateway(tmp_path, upstream.url) as (gw, url):
        arrivals = []
        start = time.perf_counter()
        with httpx.stream("POST", url + "/v1/chat/completions", json=chat(model="slow-stream", stream=True),
                          headers=ALICE) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data:"):
                    arrivals.append((time.perf_counter() - start, line))
        # The first chunk reached the client long before the upstream finished (4 chunks, 0.3 s apart).
        assert len(arrivals) == 5 and arrivals[-1][1] == "data: [DONE]"
        assert arrivals[0][0] < arrivals[-1][0] - 0.6
        with httpx.stream("POST", url + "/v1/chat/completions", json=chat(stream=True), headers=ALICE) as r:
            text = "".join(orjson.loads(line[6:])["choices"][0]["delta"].get("content", "")
                           for line in r.iter_lines() if line.startswith("data: {"))
        assert text == DEFAULT_TEXT
    events = stored_events(tmp_path / "events.duckdb")
    assert len(events) == 2
    assert orjson.loads(events[0]["response"])["choices"][0]["message"]["content"] == "part0 part1 part2 part3 "
    assert orjson.loads(events[1]["response"])["choices"][0]["message"]["content"] == DEFAULT_TEXT
    assert orjson.loads(events[1]["extra"])["stream"] is True


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer sk-nobody-999"}, {"authorization": "Basic abc"}])
def test_unknown_or_missing_key_is_401_in_openai_format(tmp_path, upstream, headers):
    with running_gateway(tmp_path, upstream.url) as (gw, url):
        r = httpx.post(url + "/v1/chat/completions", json=chat(), headers=headers)
        assert r.status_code == 401
        err = r.json()["error"]
        assert err["code"] == "invalid_api_key" and err["type"] == "invalid_request_error" and "message" in err
    assert stored_events(tmp_path / "events.duckdb") == []


@pytest.mark.parametrize("body, code, param", [
    (b"{not json", "invalid_json", None),
    (b"", "invalid_json", None),
    (b"[1, 2]", "invalid_request", None),
    (b'{"messages": "hello"}', "invalid_request", "messages"),
    (b'{"messages": [{"role": 5, "content": "x"}]}', "invalid_request", "messages[0].role"),
    (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}', "invalid_request", "max_tokens"),
    (b"\xff\xfe\x00garbage", "invalid_json", None),
])
def test_malformed_bodies_are_400(tmp_path, upstream, body, code, param):
    with running_gateway(tmp_path, upstream.url) as (gw, url):
        r = httpx.post(url + "/v1/chat/completions", content=body, headers=ALICE)
        assert r.status_code == 400
        assert r.json()["error"]["code"] == code and r.json()["error"]["param"] == param
        # ... and the gateway is still fine afterwards.
        assert httpx.post(url + "/v1/chat/completions", json=chat(), headers=ALICE).status_code == 200


def test_oversized_body_is_400_and_unicode_is_fine(tmp_path, upstream):
    with running_gateway(tmp_path, upstream.url, max_body_bytes=10_000) as (gw, url):
        big = chat("x" * 20_000)
        r = httpx.post(url + "/v1/chat/completions", json=big, headers=ALICE)
        assert r.status_code == 400 and r.json()["error"]["code"] == "request_too_large"

        def chunks():          # no content-length: the limit is enforced while reading
            for _ in range(20):
                yield b" " * 1000
        r = httpx.post(url + "/v1/chat/completions", content=chunks(), headers=ALICE)
        assert r.status_code == 400 and r.json()["error"]["code"] == "request_too_large"
        r = httpx.post(url + "/v1/chat/completions", json=chat("Grüße 你好 🙂 \u202e"), headers=ALICE)
        assert r.status_code == 200
    assert stored_events(tmp_path / "events.duckdb")[0]["prompt_text"] == "Grüße 你好 🙂 \u202e"


def _error_event(tmp_path) -> dict:
    events = stored_events(tmp_path / "events.duckdb")
    assert len(events) == 1
    return events[0]


def test_upstream_down_gives_502_and_an_event(tmp_path):
    with running_gateway(tmp_path, f"http://127.0.0.1:{free_port()}") as (gw, url):
        r = httpx.post(url + "/v1/chat/completions", json=chat(), headers=ALICE)
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unavailable"
        assert r.json()["error"]["type"] == "upstream_error"
    ev = _error_event(tmp_path)
    assert ev["status"] == 502 and orjson.loads(ev["extra"])["error"]["code"] == "upstream_unavailable"


def test_slow_upstream_times_out_with_504(tmp_path, upstream):
    with running_gateway(tmp_path, upstream.url, timeout_s=0.5) as (gw, url):
        r = httpx.post(url + "/v1/chat/completions", json=chat(model="slow"), headers=ALICE, timeout=10)
        assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    assert _error_event(tmp_path)["status"] == 504


@pytest.mark.parametrize("model, status, code, needle", [
    ("fail-500", 502, "upstream_error", "HTTP 500"),
    ("fail-503-json", 502, "upstream_error", "model overloaded"),
    ("malformed", 502, "upstream_bad_response", "malformed JSON"),
])
def test_upstream_failures_are_clear_errors(tmp_path, upstream, model, status, code, needle):
    with running_gateway(tmp_path, upstream.url) as (gw, url):
        r = httpx.post(url + "/v1/chat/completions", json=chat(model=model), headers=ALICE)
        assert r.status_code == status
        assert r.json()["error"]["code"] == code and needle in r.json()["error"]["message"]
        metrics = httpx.get(url + "/metrics").text
        assert f'distillguard_upstream_errors_total{{kind="{code}"}} 1.0' in metrics
    ev = _error_event(tmp_path)
    assert ev["status"] == status and orjson.loads(ev["extra"])["error"]["code"] == code


def test_stream_cut_midway_ends_with_an_error_event(tmp_path, upstream):
    with running_gateway(tmp_path, upstream.url) as (gw, url):
        with httpx.stream("POST", url + "/v1/chat/completions", json=chat(model="cut-stream", stream=True),
                          headers=ALICE) as r:
            lines = [line for line in r.iter_lines() if line.startswith("data:")]
        assert "data: [DONE]" not in lines
        last = orjson.loads(lines[-1][6:])
        assert last["error"]["code"] == "upstream_stream_cut"
    ev = _error_event(tmp_path)
    extra = orjson.loads(ev["extra"])
    assert extra["error"]["code"] == "upstream_stream_cut"
    assert orjson.loads(ev["response"])["choices"][0]["message"]["content"] == "Hello wor"


def test_admin_api_refuses_user_tokens(tmp_path, upstream):
    with running_gateway(tmp_path, upstream.url) as (gw, url):
        assert httpx.get(url + "/admin/status").status_code == 401
        r = httpx.get(url + "/admin/status", headers=ALICE)
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_forbidden"
        assert httpx.get(url + "/admin/status", headers={"authorization": "Bearer wrong"}).status_code == 401
        r = httpx.get(url + "/admin/status", headers=ADMIN_H)
        assert r.status_code == 200 and r.json()["mode"] == "enforce"
        # ... and the admin token is not an API key.
        assert httpx.post(url + "/v1/chat/completions", json=chat(), headers=ADMIN_H).status_code == 401


def test_admin_api_is_off_without_a_token(tmp_path, upstream, monkeypatch):
    monkeypatch.delenv("DISTILLGUARD_ADMIN_TOKEN", raising=False)
    with running_gateway(tmp_path, upstream.url, admin_token=None) as (gw, url):
        r = httpx.get(url + "/admin/status", headers=ADMIN_H)
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"


def test_manual_block_and_clear_with_reasons(tmp_path, upstream):
    with running_gateway(tmp_path, upstream.url) as (gw, url):
        r = httpx.post(url + "/admin/accounts/alice/action", json={"action": "block", "reason": "ticket T-17"},
                       headers=ADMIN_H)
        assert r.status_code == 200
        r = httpx.post(url + "/v1/chat/completions", json=chat(), headers=ALICE)
        assert r.status_code == 403
        assert r.headers["x-distillguard-action"] == "block" and r.headers["x-distillguard-reason"] == "manual_block"
        assert "ticket T-17" in r.headers["x-distillguard-explanation"]
        assert r.json()["error"]["code"] == "manual_block" and r.json()["error"]["distillguard"]["action"] == "block"
        assert httpx.post(url + "/v1/chat/completions", json=chat(), headers=BOB).status_code == 200
        assert orjson.loads((tmp_path / "log" / "admin-state.json").read_bytes())["manual"]["alice"]["action"] == "block"
        httpx.post(url + "/admin/accounts/alice/action", json={"action": "clear"}, headers=ADMIN_H)
        assert httpx.post(url + "/v1/chat/completions", json=chat(), headers=ALICE).status_code == 200
        bad = httpx.post(url + "/admin/accounts/alice/action", json={"action": "explode"}, headers=ADMIN_H)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "action"
    events = stored_events(tmp_path / "events.duckdb")
    decisions = [orjson.loads(e["extra"])["decision"]["action"] for e in events if e["account"] == "alice"]
    assert decisions == ["block", "allow"]
    assert events[0]["status"] == 403


def test_manual_throttle_returns_429_with_retry_after(tmp_path, upstream):
    with running_gateway(tmp_path, upstream.url) as (gw, url):
        httpx.post(url + "/admin/accounts/alice/action",
                   json={"action": "throttle", "requests_per_minute": 2, "reason": "cool down"}, headers=ADMIN_H)
        codes = [httpx.post(url + "/v1/chat/completions", json=chat(f"q{i}"), headers=ALICE).status_code
                 for i in range(4)]
        assert codes == [200, 200, 429, 429]
        r = httpx.post(url + "/v1/chat/completions", json=chat(), headers=ALICE)
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "manual_throttle" and r.json()["error"]["type"] == "rate_limit_exceeded"


def test_shadow_mode_decides_but_does_not_act(tmp_path, upstream):
    with running_gateway(tmp_path, upstream.url, config_text='[policy]\nmode = "shadow"\n') as (gw, url):
        httpx.post(url + "/admin/accounts/alice/action", json={"action": "block", "reason": "test"}, headers=ADMIN_H)
        r = httpx.post(url + "/v1/chat/completions", json=chat(), headers=ALICE)
        assert r.status_code == 200
        assert r.headers["x-distillguard-action"] == "block" and r.headers["x-distillguard-mode"] == "shadow"
    decision = orjson.loads(stored_events(tmp_path / "events.duckdb")[0]["extra"])["decision"]
    assert decision["action"] == "block" and decision["enforced"] is False


@pytest.mark.parametrize("fail, status", [("open", 200), ("closed", 403)])
def test_internal_errors_fail_open_or_closed(tmp_path, upstream, fail, status):
    with running_gateway(tmp_path, upstream.url, config_text=f'[policy]\nfail = "{fail}"\n') as (gw, url):
        def broken(*args, **kwargs):
            raise ZeroDivisionError("injected")
        gw.scorer.observe = broken
        r = httpx.post(url + "/v1/chat/completions", json=chat(), headers=ALICE)
        assert r.status_code == status
        assert r.headers["x-distillguard-reason"] == "internal_error"
        assert f'distillguard_internal_errors_total{{fail_mode="{fail}"}} 1.0' in httpx.get(url + "/metrics").text


def test_an_unexpected_error_on_the_proxied_path_is_an_openai_500(tmp_path, upstream):
    """POSTs to the OpenAI endpoints skip Starlette's layers (app.GatewayApp): an exception there
    is still answered as those layers answer it (500, OpenAI JSON, no traceback), the gateway
    keeps serving, and other methods on the same path still get Starlette's 405."""
    with running_gateway(tmp_path, upstream.url) as (gw, url):
        lookup = gw.keys.lookup

        def broken(key):
            raise ZeroDivisionError("injected")
        gw.keys.lookup = broken
        r = httpx.post(url + "/v1/chat/completions", json=chat(), headers=ALICE)
        assert r.status_code == 500
        assert r.json()["error"]["code"] == "internal_error" and "injected" not in r.text
        gw.keys.lookup = lookup
        assert httpx.post(url + "/v1/chat/completions", json=chat(), headers=ALICE).status_code == 200
        r = httpx.get(url + "/v1/chat/completions", headers=ALICE)
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


RULES_STRIP = """
[[policy.rules]]
name = "everyone"
when = "any"
actions = ["strip_logprobs", "strip_reasoning", "cap_max_tokens", "cohort"]
max_tokens = 100
cohort = "cohort-x"
"""


def test_modify_actions_strip_and_cap(tmp_path, upstream):
    with running_gateway(tmp_path, upstream.url, config_text=RULES_STRIP) as (gw, url):
        r = httpx.post(url + "/v1/chat/completions", headers=ALICE,
                       json=chat(model="reasoning", logprobs=True, top_logprobs=5, max_tokens=4000,
                                 reasoning_effort="high"))
        assert r.status_code == 200 and r.headers["x-distillguard-action"] == "modify"
        assert "reasoning_content" not in r.json()["choices"][0]["message"]
        sent = upstream.app.seen[-1]
        assert "logprobs" not in sent and "top_logprobs" not in sent and "reasoning_effort" not in sent
        assert sent["max_tokens"] == 100
        assert upstream.app.headers[-1]["x-distillguard-cohort"] == "cohort-x"
    ev = stored_events(tmp_path / "events.duckdb")[0]
    assert ev["logprobs"] is True and ev["max_tokens"] == 4000      # the log keeps what the client asked


def test_allowlist_and_keys_via_admin_survive_restart(tmp_path, upstream):
    with running_gateway(tmp_path, upstream.url) as (gw, url):
        assert httpx.put(url + "/admin/allowlist/alice", headers=ADMIN_H).json()["allowlist"] == ["alice"]
        r = httpx.post(url + "/admin/keys", json={"key": "sk-carol-12345", "account": "carol",
                                                  "email": "carol@example.org"}, headers=ADMIN_H)
        assert r.status_code == 201 and r.json()["key_id"].startswith("key-")
        assert httpx.post(url + "/admin/keys", json={"key": "short", "account": "x"}, headers=ADMIN_H).status_code == 400
        assert httpx.post(url + "/admin/keys", json={"key": "sk-dave-123456"}, headers=ADMIN_H).status_code == 400
        r = httpx.post(url + "/v1/chat/completions", json=chat(), headers={"authorization": "Bearer sk-carol-12345"})
        assert r.status_code == 200
        r = httpx.post(url + "/v1/chat/completions", json=chat(), headers=ALICE)
        assert r.headers["x-distillguard-reason"] == "authorised"
    with running_gateway(tmp_path, upstream.url) as (gw, url):
        r = httpx.post(url + "/v1/chat/completions", json=chat(), headers={"authorization": "Bearer sk-carol-12345"})
        assert r.status_code == 200
        assert "alice" in httpx.get(url + "/admin/allowlist", headers=ADMIN_H).json()["allowlist"]
        httpx.post(url + "/admin/keys/revoke", json={"key": "sk-carol-12345"}, headers=ADMIN_H)
        r = httpx.post(url + "/v1/chat/completions", json=chat(), headers={"authorization": "Bearer sk-carol-12345"})
        assert r.status_code == 401
    events = stored_events(tmp_path / "events.duckdb")
    assert {e["account"] for e in events} == {"alice", "carol"}
    assert orjson.loads([e for e in events if e["account"] == "carol"][0]["identity"])["email"] == "carol@example.org"


def test_metrics_are_prometheus_text(tmp_path, upstream):
    with running_gateway(tmp_path, upstream.url) as (gw, url):
        for _ in range(3):
            httpx.post(url + "/v1/chat/completions", json=chat(), headers=ALICE)
        text = httpx.get(url + "/metrics").text
    assert 'distillguard_requests_total{endpoint="/v1/chat/completions",status="200"} 3.0' in text
    assert 'distillguard_request_seconds_count{endpoint="/v1/chat/completions"} 3.0' in text
    assert "distillguard_overhead_seconds_bucket" in text and "distillguard_log_backlog_records" in text
    assert "distillguard_events_logged_total 3.0" in text


def test_extraction_is_limited_at_once_and_blocked_once_the_flag_persists(tmp_path, upstream):
    """An account harvesting reasoning traces, under the default graduated policy: from its first
    flagged request its reasoning is stripped (asked for and returned), its answers capped and
    shaped, its rate held to 10 a minute and it is watermarked; it is blocked only once the flag
    has persisted a day and 1,000 more queries (refused ones count: hammering the limit hastens it)."""
    with running_gateway(tmp_path, upstream.url, trust_client_timestamps=True) as (gw, url):
        t0 = 1_760_000_000.0

        def ask(client, i, ts, model="ok"):
            body = chat(f"Solve problem {i}: a tank holds {i * 7 + 3} litres and drains {i % 9 + 2} litres per "
                        f"minute. Think step by step and show your reasoning before the final answer.",
                        model=model, max_tokens=4096, reasoning_effort="high")
            return client.post("/v1/chat/completions", json=body, headers={"x-distillguard-replay-ts": f"{ts:.3f}"})

        flagged_at = None
        with httpx.Client(base_url=url, headers=ALICE) as client:
            for i in range(400):                        # one every 2 s (no limit applies before the flag)
                r = ask(client, i, t0 + 2.0 * i)
                assert r.status_code == 200, (i, r.text)
                if r.headers["x-distillguard-action"] != "allow":
                    flagged_at = i + 1
                    break
            assert flagged_at is not None and flagged_at <= 100, "never acted on"
            assert r.headers["x-distillguard-action"] == "modify"
            assert r.headers["x-distillguard-reason"].split(",") == ["extraction_flagged", "output_shaped"]
            explanation = r.headers["x-distillguard-explanation"]
            assert "privileged content" in explanation and "rather than blocked" in explanation
            assert "reasoning" in explanation
            sent, sent_headers = upstream.app.seen[-1], upstream.app.headers[-1]
            assert "reasoning_effort" not in sent and sent["max_tokens"] == 512
            assert sent_headers["x-distillguard-shape"] == "summary" and sent_headers["x-distillguard-cohort"] == "watch"
            # A reasoning model's hidden trace is removed from the answer.
            r = ask(client, 10_000, t0 + 2.0 * flagged_at + 60.0, model="reasoning")
            assert r.status_code == 200 and r.headers["x-distillguard-action"] == "modify"
            assert r.json()["choices"][0]["message"] == {"role": "assistant", "content": "42"}
            # Faster than 10 a minute: refused with 429 and Retry-After, not blocked.
            burst = [ask(client, 20_000 + k, t0 + 2.0 * flagged_at + 120.0) for k in range(15)]
            assert {b.status_code for b in burst} == {200, 429}
            refused = next(b for b in burst if b.status_code == 429)
            assert refused.json()["error"]["code"] == "extraction_flagged" and int(refused.headers["retry-after"]) >= 1
            # A day later it keeps hammering: blocked once 1,000 more queries came after the flag.
            since = gw.policy.flagged_since("alice")
            assert since is not None and since[0] == pytest.approx(t0 + 2.0 * (flagged_at - 1))
            later = since[0] + 86_400.0
            blocked_at = None
            for k in range(1100):
                r = ask(client, 30_000 + k, later + k * 0.05)
                assert r.status_code in (200, 429, 403)
                if r.status_code == 403:
                    blocked_at = gw.scorer.accounts["alice"].queries
                    break
            assert blocked_at is not None, "never blocked"
            assert blocked_at - since[1] == 1000
            assert r.json()["error"]["code"] == "extraction_flagged"
            assert "persisted past a day and 1,000 more queries" in r.headers["x-distillguard-explanation"]
        view = httpx.get(url + "/admin/accounts/alice", headers=ADMIN_H).json()
        assert view["flagged"] is True and any(x["signal"] == "cot_elicitation" for x in view["reasons"])
        # A person chatting at the same time is not touched.
        for i in range(30):
            r = httpx.post(url + "/v1/chat/completions", json=chat(f"hi, could you help me plan a trip {i}?"),
                           headers=BOB)
            assert r.status_code == 200 and r.headers["x-distillguard-action"] == "allow"
    print(f"acted on after {flagged_at} queries, blocked {blocked_at - since[1]} queries and a day after the flag")
