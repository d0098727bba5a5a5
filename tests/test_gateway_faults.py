"""Issue 15's rows against a real gateway on 127.0.0.1: a record near max_body_bytes (F1), JSON
nested past what can be logged (F2), a full log disk (F4, a small tmpfs), X-Forwarded-For from
untrusted peers (F5), owner-only files (F7), OpenAI-format 404/405 and the admin 401 code."""

from __future__ import annotations

import os
import time
from pathlib import Path

import duckdb
import httpx
import orjson
import pytest

from distillguard.gateway.server import ServerThread
from distillguard.gateway.wal import iter_log_records
from distillguard.serve.fixed import FixedCompletionServer
from gateway_support import ADMIN, fill_to, running_gateway, small_tmpfs

ALICE = {"authorization": "Bearer sk-alice-0001"}


def chat(content: str = "hello", **extra) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **extra}


def stored_ids(db: Path) -> set[str]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {r[0] for r in con.execute("SELECT id FROM events").fetchall()}
    finally:
        con.close()


def assert_openai_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert error["code"] == code and error["message"] and "type" in error and "param" in error
    return error


@pytest.fixture(scope="module")
def upstream():
    fixed = FixedCompletionServer(chunks=3)
    with ServerThread(fixed) as server:
        server.fixed = fixed          # counts the requests that reached it
        yield server


def test_a_body_just_under_max_body_bytes_is_answered_and_stored(tmp_path, upstream):
    """F1: 5 small, one of 4,194,000 characters, 20 small; restart: all 26 in the store (was 5)."""
    answered = []
    with running_gateway(tmp_path, upstream.url) as (gw, url), httpx.Client(base_url=url, timeout=60) as client:
        for i in range(26):
            content = "x" * 4_194_000 if i == 5 else f"small request {i}"
            r = client.post("/v1/chat/completions", json=chat(content), headers=ALICE)
            assert r.status_code == 200, r.text[:200]
            answered.append(r.headers["x-request-id"])
    with running_gateway(tmp_path, upstream.url) as (gw, url):      # a restart loads and rotates
        pass
    assert set(answered) <= stored_ids(tmp_path / "events.duckdb")


def _deep(depth: int) -> bytes:
    return b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "metadata": ' + \
        b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("depth", [65, 253, 1000])
def test_json_nested_past_what_can_be_logged_is_a_400_before_proxying(tmp_path, upstream, depth, stream):
    """F2: 253 levels once got a plain-text 500 (a stream: every token, no [DONE], no event)."""
    body = _deep(depth)
    if stream:
        body = body[:-1] + b', "stream": true}'
    with running_gateway(tmp_path, upstream.url) as (gw, url):
        before = upstream.fixed.requests
        r = httpx.post(url + "/v1/chat/completions", content=body, headers={**ALICE, "content-type": "application/json"})
        error = assert_openai_error(r, 400, "invalid_request")
        assert "nested deeper than 64 levels" in error["message"] and error["param"] == "request"
        assert upstream.fixed.requests == before                 # never proxied
        ok = httpx.post(url + "/v1/chat/completions", content=_deep(60), headers={**ALICE, "content-type": "application/json"})
        assert ok.status_code == 200


def _drive(url: str, n: int) -> tuple[list[str], list[httpx.Response]]:
    answered, refused = [], []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(n):
            stream = i % 3 == 0
            r = client.post("/v1/chat/completions", json=chat(f"request {i} " + "y" * 400, stream=stream),
                            headers=ALICE)
            if r.status_code == 200 and (not stream or r.text.rstrip().endswith("data: [DONE]")):
                answered.append(r.headers["x-request-id"])
            elif r.status_code == 200:
                assert '"code":"log_unavailable"' in r.text and "[DONE]" not in r.text   # an error event
                refused.append(r)
            else:
                refused.append(r)
    return answered, refused


def test_a_full_log_disk_answers_503_and_never_loses_an_answered_exchange(tmp_path, upstream):
    """F4: a 1 MiB tmpfs as the log directory, filled to ~20 KB free; 120 requests (a third streamed):
    each is answered and logged, or refused with an OpenAI-format 503 + Retry-After. Was: plain-text
    500s, cut streams, and one answered exchange missing (a short write acknowledged whole)."""
    with small_tmpfs(tmp_path / "log") as log_dir:
        with running_gateway(tmp_path, upstream.url, log_dir=log_dir,
                             config_text="[log]\nsink = 'none'\nkeep_segments = true\n") as (gw, url):
            filler = fill_to(log_dir, 20_000)
            answered, refused = _drive(url, 120)
            assert refused, "the disk never filled up"
            for r in refused:
                if r.status_code != 200:
                    assert_openai_error(r, 503, "log_unavailable")
                    assert int(r.headers["retry-after"]) >= 1
            assert httpx.get(url + "/healthz").status_code == 503
            filler.unlink()                                     # space again: the gateway recovers
            time.sleep(gw.log.retry_s + 0.1)
            ok = httpx.post(url + "/v1/chat/completions", json=chat("after"), headers=ALICE)
            assert ok.status_code == 200 and httpx.get(url + "/healthz").status_code == 200
            answered.append(ok.headers["x-request-id"])
            assert gw.log.flush()
            logged = {orjson.loads(line)["id"] for line in iter_log_records(log_dir)}
        assert set(answered) <= logged, f"{len(set(answered) - logged)} answered exchanges not in the log"
        assert len(answered) >= 5


def test_failing_open_answers_and_writes_the_records_once_space_returns(tmp_path, upstream):
    with small_tmpfs(tmp_path / "log") as log_dir:
        with running_gateway(tmp_path, upstream.url, log_dir=log_dir,
                             config_text="[log]\nsink = 'none'\nkeep_segments = true\nfail = 'open'\n") as (gw, url):
            filler = fill_to(log_dir, 20_000)
            answered, refused = _drive(url, 60)
            assert not refused and gw.log.spooled() > 0         # answered, held in memory
            filler.unlink()
            deadline = time.monotonic() + 10
            while gw.log.spooled() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert gw.log.flush()
            logged = {orjson.loads(line)["id"] for line in iter_log_records(log_dir)}
        assert set(answered) <= logged


def _logged_ip(gw, request_id: str) -> str | None:
    assert gw.log.flush()
    for line in iter_log_records(gw.config.log.dir):
        event = orjson.loads(line)
        if event["id"] == request_id:
            return event.get("ip")
    raise AssertionError("not logged")


def test_x_forwarded_for_counts_only_from_trusted_proxies(tmp_path, upstream):
    """F5: uvicorn believed X-Forwarded-For from loopback, so the spoofed address was logged even with
    trust_forwarded_for = false."""
    spoof = {**ALICE, "x-forwarded-for": "203.0.113.66"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with running_gateway(tmp_path / "a", upstream.url, log_dir=tmp_path / "a-log",
                         config_text="[log]\nkeep_segments = true\nsink = 'none'\n") as (gw, url):
        r = httpx.post(url + "/v1/chat/completions", json=chat(), headers=spoof)
        assert _logged_ip(gw, r.headers["x-request-id"]) == "127.0.0.1"
    with running_gateway(tmp_path / "b", upstream.url, log_dir=tmp_path / "b-log",
                         config_text='trusted_proxies = ["127.0.0.1"]\n[log]\nkeep_segments = true\nsink = "none"\n'
                         ) as (gw, url):
        r = httpx.post(url + "/v1/chat/completions", json=chat(),
                       headers={**ALICE, "x-forwarded-for": "198.51.100.1, 203.0.113.66"})
        assert _logged_ip(gw, r.headers["x-request-id"]) == "203.0.113.66"   # the hop our proxy saw


def test_files_holding_traffic_are_owner_only(tmp_path, upstream):
    """F7: segments, events.duckdb and admin-state.json were 0644."""
    old = os.umask(0o022)
    try:
        with running_gateway(tmp_path, upstream.url) as (gw, url):
            assert httpx.post(url + "/v1/chat/completions", json=chat(), headers=ALICE).status_code == 200
            r = httpx.post(url + "/admin/accounts/alice/action", json={"action": "block", "reason": "test"},
                           headers={"authorization": f"Bearer {ADMIN}"})
            assert r.status_code == 200
    finally:
        os.umask(old)
    log_dir = tmp_path / "log"
    assert log_dir.stat().st_mode & 0o777 == 0o700
    files = [p for p in log_dir.rglob("*") if p.is_file()] + [tmp_path / "events.duckdb"]
    assert {p.name for p in files} >= {"admin-state.json", "checkpoint.json", "events.duckdb"}
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_unknown_paths_and_wrong_methods_answer_openai_errors(tmp_path, upstream):
    with running_gateway(tmp_path, upstream.url) as (gw, url):
        assert_openai_error(httpx.post(url + "/v1/nothing", headers=ALICE), 404, "not_found")
        assert_openai_error(httpx.get(url + "/v1/chat/completions", headers=ALICE), 405, "method_not_allowed")
        assert_openai_error(httpx.get(url + "/admin/status", headers={"authorization": "Bearer wrong"}), 401,
                            "invalid_admin_token")


def test_state_writes_on_a_full_disk_are_a_503_in_the_openai_format(tmp_path, upstream):
    """Saving admin state (an operator's block) on a full log disk: 503 storage_unavailable, not a
    plain-text 500."""
    with small_tmpfs(tmp_path / "log") as log_dir:
        with running_gateway(tmp_path, upstream.url, log_dir=log_dir,
                             config_text="[log]\nsink = 'none'\n") as (gw, url):
            fill_to(log_dir, 0)
            r = httpx.post(url + "/admin/accounts/alice/action", json={"action": "block", "reason": "r" * 5000},
                           headers={"authorization": f"Bearer {ADMIN}"})
            error = assert_openai_error(r, 503, "storage_unavailable")
            assert r.headers["retry-after"] == "1" and "traceback" not in error["message"].lower()
