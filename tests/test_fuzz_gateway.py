"""Generated bad input against a real gateway on 127.0.0.1: request bodies and headers on both
completion endpoints (streams too), the admin API and the appeals API. Every answer is an
OpenAI-format JSON error or a success, never a 5xx; every exchange answered 200 is in the log."""

from __future__ import annotations

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from distillguard.gateway.server import ServerThread
from distillguard.gateway.wal import iter_log_records
from distillguard.serve.fixed import FixedCompletionServer
from gateway_support import ADMIN, running_gateway
from hostile import ANY_JSON, BODY, CHAT_BODY, HEADER_VALUE, TEXT, encode

KEY = {"authorization": "Bearer sk-alice-0001"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    work = tmp_path_factory.mktemp("fuzz-gateway")
    with ServerThread(FixedCompletionServer(chunks=3)) as upstream, \
            running_gateway(work, upstream.url, config_text="[log]\nsink = 'none'\nkeep_segments = true\n") as (gw, url), \
            httpx.Client(base_url=url, timeout=30) as client:
        yield gw, client


def assert_openai_error(r: httpx.Response) -> None:
    assert r.status_code < 500 or r.status_code == 503, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.text[:200]
    error = r.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["code"], str) and isinstance(error["type"], str) and "param" in error


def check_answer(gw, r: httpx.Response) -> None:
    if r.status_code != 200:
        assert_openai_error(r)
        return
    request_id = r.headers["x-request-id"]
    assert gw.log.flush()
    assert request_id in {orjson.loads(line)["id"] for line in iter_log_records(gw.config.log.dir)}


@given(st.sampled_from(["/v1/chat/completions", "/v1/completions"]), BODY)
def test_bodies(gateway, endpoint, body):
    gw, client = gateway
    r = client.post(endpoint, content=encode(body), headers={**KEY, "content-type": "application/json"})
    if r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"):
        assert r.text.rstrip().endswith("data: [DONE]")
    check_answer(gw, r)


@given(CHAT_BODY.map(lambda b: {**b, "stream": True}))
def test_streamed_bodies(gateway, body):
    gw, client = gateway
    r = client.post("/v1/chat/completions", content=encode(body), headers={**KEY, "content-type": "application/json"})
    if r.status_code == 200:
        assert r.text.rstrip().endswith("data: [DONE]")
    check_answer(gw, r)


@given(st.binary(max_size=300))
def test_raw_bytes(gateway, raw):
    gw, client = gateway
    check_answer(gw, client.post("/v1/chat/completions", content=raw, headers=KEY))


@given(st.dictionaries(st.sampled_from(["authorization", "content-type", "x-forwarded-for", "user-agent",
                                        "x-distillguard-replay-ts", "content-encoding", "accept", "x-request-id"]),
                       HEADER_VALUE, max_size=5))
def test_headers(gateway, headers):
    gw, client = gateway
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    check_answer(gw, client.post("/v1/chat/completions", content=body, headers=headers))


ADMIN_PATHS = st.sampled_from([
    "/admin/status", "/admin/accounts", "/admin/accounts/{x}", "/admin/accounts/{x}/action", "/admin/allowlist",
    "/admin/allowlist/{x}", "/admin/clusters", "/admin/keys", "/admin/keys/revoke", "/admin/appeals",
    "/admin/appeals/{x}", "/admin/appeals/{x}/decision", "/admin/intel", "/admin/intel/reload", "/admin/{x}",
    "/v1/{x}", "/{x}", "/v1/models", "/v1/appeals", "/healthz"])
SEGMENT = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e, exclude_characters="/?#%"),
                  min_size=1, max_size=20) | st.sampled_from(["alice", "..", "%2e%2e", "ap-1", "é"])


@given(ADMIN_PATHS, SEGMENT, st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
       st.sampled_from([ADMIN, "", "wrong", "sk-alice-0001"]), ANY_JSON,
       st.dictionaries(st.sampled_from(["limit", "flagged", "status", "account"]), TEXT, max_size=3))
def test_admin_api(gateway, path, segment, method, token, body, params):
    gw, client = gateway
    headers = {"authorization": f"Bearer {token}"} if token else {}
    if path.startswith("/admin/allowlist/") and method in ("PUT", "DELETE"):
        segment = "fuzz-" + segment              # leave the real accounts' standing alone
    r = client.request(method, path.replace("{x}", segment), content=encode(body), params=params, headers=headers)
    if r.status_code >= 300:
        assert_openai_error(r)
    else:
        r.json()


@given(st.sampled_from(["POST", "GET"]), ANY_JSON | st.fixed_dictionaries({"message": TEXT | ANY_JSON}),
       st.sampled_from(["sk-alice-0001", "sk-bob-00002", "nope", ""]))
def test_appeals_api(gateway, method, body, key):
    gw, client = gateway
    headers = {"authorization": f"Bearer {key}"} if key else {}
    r = client.request(method, "/v1/appeals", content=encode(body), headers=headers)
    if r.status_code >= 300:
        assert_openai_error(r)
    else:
        r.json()
