"""Appeals at the gateway over real HTTP on loopback: a blocked user files one with their own key,
the block answer points to the endpoint, the admin API lists and decides, a lift unblocks, and the
book survives a restart; bad input gets clear OpenAI-format errors."""

from __future__ import annotations

import httpx
import orjson
import pytest

from distillguard.gateway.appeals import COOLDOWN_S, AppealBook
from distillguard.gateway.server import ServerThread
from gateway_support import ADMIN, FaultyUpstream, running_gateway

ALICE = {"authorization": "Bearer sk-alice-0001"}
BOB = {"authorization": "Bearer sk-bob-00002"}
ADMIN_H = {"authorization": f"Bearer {ADMIN}"}


def chat(content: str = "Hello, how are you today?") -> dict:
    return {"model": "ok", "messages": [{"role": "user", "content": content}]}


@pytest.fixture(scope="module")
def upstream():
    with ServerThread(FaultyUpstream()) as server:
        yield server


def _block(url: str, account: str = "alice") -> None:
    r = httpx.post(f"{url}/admin/accounts/{account}/action", json={"action": "block", "reason": "ticket T-9"},
                   headers=ADMIN_H)
    assert r.status_code == 200


def test_block_answer_points_to_the_appeal_endpoint(tmp_path, upstream):
    with running_gateway(tmp_path, upstream.url) as (gw, url):
        _block(url)
        r = httpx.post(url + "/v1/chat/completions", json=chat(), headers=ALICE)
        assert r.status_code == 403 and r.headers["x-distillguard-appeal"] == "/v1/appeals"
        error = r.json()["error"]
        assert "To appeal, POST /v1/appeals" in error["message"] and "ticket T-9" in error["message"]
        assert error["distillguard"]["appeal"] == {"method": "POST", "path": "/v1/appeals"}
        ok = httpx.post(url + "/v1/chat/completions", json=chat(), headers=BOB)
        assert ok.status_code == 200 and "x-distillguard-appeal" not in ok.headers


def test_a_busy_rate_limit_is_not_an_appealable_judgement(tmp_path, upstream):
    config = 'upstream = "x"\n[policy.limits]\nrequests_per_minute = 1\n'
    with running_gateway(tmp_path, upstream.url, config_text=config) as (gw, url):
        codes = [httpx.post(url + "/v1/chat/completions", json=chat(f"q{i}"), headers=BOB) for i in range(2)]
        assert [r.status_code for r in codes] == [200, 429]
        assert "x-distillguard-appeal" not in codes[1].headers and "appeal" not in codes[1].json()["error"]["message"]
        r = httpx.post(url + "/v1/appeals", json={"message": "let me in"}, headers=BOB)
        assert r.status_code == 409 and r.json()["error"]["code"] == "nothing_to_appeal"


@pytest.mark.parametrize("headers,body,status,code,param", [
    ({}, {"message": "hi"}, 401, "invalid_api_key", None),
    ({"authorization": "Bearer sk-wrong-000"}, {"message": "hi"}, 401, "invalid_api_key", None),
    (ALICE, {"message": "x" * 2001}, 400, "invalid_request", "message"),
    (ALICE, {"message": "   "}, 400, "invalid_request", "message"),
    (ALICE, {"message": 7}, 400, "invalid_request", "message"),
    (ALICE, {}, 400, "invalid_request", "message"),
    (ALICE, b"{not json", 400, "invalid_json", None),
    (ALICE, [1, 2], 400, "invalid_request", None),
    (ALICE, {"message": "ok", "pad": "y" * 20_000}, 400, "request_too_large", None),
])
def test_bad_filings_get_clear_errors(tmp_path, upstream, headers, body, status, code, param):
    with running_gateway(tmp_path, upstream.url) as (gw, url):
        _block(url)
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        r = httpx.post(url + "/v1/appeals", content=content, headers={**headers, "content-type": "application/json"})
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert error["code"] == code and error["param"] == param and error["message"]
        assert gw.appeals.counts()["open"] == 0


def test_file_list_decide_lift_and_survive_a_restart(tmp_path, upstream):
    with running_gateway(tmp_path, upstream.url) as (gw, url):
        _block(url)
        httpx.post(url + "/v1/chat/completions", json=chat(), headers=ALICE)
        assert httpx.post(url + "/v1/appeals", json={"message": "hi"}, headers=BOB).json()["error"]["code"] == \
            "nothing_to_appeal"
        r = httpx.post(url + "/v1/appeals", json={"message": "  We run our eval suite nightly.  "}, headers=ALICE)
        assert r.status_code == 201, r.text
        appeal = r.json()
        assert appeal["status"] == "open" and appeal["message"] == "We run our eval suite nightly."
        assert appeal["id"].startswith("ap-") and "analyst" not in appeal and "standing" not in appeal
        again = httpx.post(url + "/v1/appeals", json={"message": "please"}, headers=ALICE)
        assert again.status_code == 409 and again.json()["error"]["code"] == "appeal_exists"
        assert again.json()["error"]["distillguard"]["appeal"]["id"] == appeal["id"]
        mine = httpx.get(url + "/v1/appeals", headers=ALICE).json()
        assert [a["id"] for a in mine["data"]] == [appeal["id"]]
        assert httpx.get(url + "/v1/appeals", headers=BOB).json()["data"] == []

        # the admin side: user keys refused, queue with standing, decisions checked
        assert httpx.get(url + "/admin/appeals", headers=ALICE).status_code == 403
        assert httpx.get(url + "/admin/appeals").status_code == 401
        queue = httpx.get(url + "/admin/appeals", headers=ADMIN_H).json()
        assert queue["counts"] == {"open": 1, "upheld": 0, "lifted": 0} and queue["total"] == 1
        row = queue["appeals"][0]
        assert row["account"] == "alice" and row["standing"]["manual"]["action"] == "block"
        assert row["standing"]["refusal"]["codes"] == ["manual_block"]
        assert httpx.get(url + "/admin/appeals/ap-nope", headers=ADMIN_H).status_code == 404
        nope = httpx.post(url + "/admin/appeals/ap-nope/decision", json={"decision": "lift"}, headers=ADMIN_H)
        assert nope.status_code == 404 and nope.json()["error"]["code"] == "not_found"
        bad = httpx.post(f"{url}/admin/appeals/{appeal['id']}/decision", json={"decision": "delete"}, headers=ADMIN_H)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "decision"
        assert httpx.get(url + "/admin/appeals?status=weird", headers=ADMIN_H).status_code == 400

        lifted = httpx.post(f"{url}/admin/appeals/{appeal['id']}/decision",
                            json={"decision": "lift", "note": "confirmed eval partner", "analyst": "dana"},
                            headers=ADMIN_H)
        assert lifted.status_code == 200, lifted.text
        assert lifted.json()["status"] == "lifted" and lifted.json()["manual"]["action"] == "allow"
        assert httpx.post(url + "/v1/chat/completions", json=chat(), headers=ALICE).status_code == 200
        twice = httpx.post(f"{url}/admin/appeals/{appeal['id']}/decision", json={"decision": "uphold"},
                           headers=ADMIN_H)
        assert twice.status_code == 409 and twice.json()["error"]["code"] == "appeal_decided"
        seen = httpx.get(url + "/v1/appeals", headers=ALICE).json()["data"][0]
        assert seen["status"] == "lifted" and seen["note"] == "confirmed eval partner" and seen["decided_at"]
    state = orjson.loads((tmp_path / "log" / "admin-state.json").read_bytes())
    assert state["manual"]["alice"]["action"] == "allow" and appeal["id"] in state["manual"]["alice"]["reason"]
    with running_gateway(tmp_path, upstream.url) as (gw, url):   # same log dir: a restart
        after = httpx.get(f"{url}/admin/appeals/{appeal['id']}", headers=ADMIN_H).json()
        assert after["status"] == "lifted" and after["analyst"] == "dana" and after["message"].startswith("We run")
        assert httpx.post(url + "/v1/chat/completions", json=chat(), headers=ALICE).status_code == 200


def test_uphold_keeps_the_block_and_starts_a_cooldown(tmp_path, upstream):
    with running_gateway(tmp_path, upstream.url) as (gw, url):
        _block(url)
        first = httpx.post(url + "/v1/appeals", json={"message": "mistake"}, headers=ALICE).json()
        r = httpx.post(f"{url}/admin/appeals/{first['id']}/decision", json={"decision": "uphold", "note": "no"},
                       headers=ADMIN_H)
        assert r.status_code == 200 and r.json()["status"] == "upheld" and r.json()["manual"]["action"] == "block"
        assert httpx.post(url + "/v1/chat/completions", json=chat(), headers=ALICE).status_code == 403
        again = httpx.post(url + "/v1/appeals", json={"message": "really"}, headers=ALICE)
        assert again.status_code == 429 and again.json()["error"]["code"] == "appeal_cooldown"
        assert 0 < int(again.headers["retry-after"]) <= COOLDOWN_S
        queue = httpx.get(url + "/admin/appeals?status=upheld", headers=ADMIN_H).json()
        assert [a["id"] for a in queue["appeals"]] == [first["id"]]


def test_the_book_skips_a_torn_last_line(tmp_path):
    book = AppealBook(tmp_path / "appeals.jsonl")
    kept = book.file("acct", "key-1", "please", {"appealable": True})
    with open(tmp_path / "appeals.jsonl", "ab") as fh:
        fh.write(b'{"id": "ap-torn", "acc')
    again = AppealBook(tmp_path / "appeals.jsonl")
    assert again.get(kept.id) is not None and again.get("ap-torn") is None and again.torn == 1
    assert again.queue()[0].standing == {}
