"""Every door of the API through the gateway, driven by the official ``openai`` SDK against a real
upstream on loopback: the Responses API (plain, streamed, continued), embeddings, one model, and
the Batch API (upload judged line by line, a flagged account's batch refused, answers logged
when the output is fetched). Each exchange is logged, scored and stored."""

from __future__ import annotations

import io
import time

import httpx
import openai
import orjson
import pytest

from distillguard.gateway.server import ServerThread
from distillguard.serve.fixed import DEFAULT_TEXT, FixedCompletionServer
from gateway_support import ADMIN, running_gateway
from test_gateway_http import stored_events

ADMIN_H = {"authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def upstream():
    app = FixedCompletionServer()
    with ServerThread(app) as server:
        server.app = app
        yield server


def sdk(url: str, key: str = "sk-alice-0001") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def batch_file(n: int, *, max_tokens: int = 4000, url: str = "/v1/chat/completions") -> bytes:
    lines = []
    for i in range(n):
        body = {"model": "fixed-model", "max_tokens": max_tokens, "logprobs": True,
                "messages": [{"role": "user", "content": f"Explain topic {i} in full detail, step by step."}]}
        lines.append({"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body})
    return b"".join(orjson.dumps(x) + b"\n" for x in lines)


def test_responses_plain_streamed_and_continued_are_logged_and_scored(tmp_path, upstream):
    with running_gateway(tmp_path, upstream.url) as (gw, url):
        client = sdk(url)
        raw = client.responses.with_raw_response.create(model="fixed-model", input="What is a B-tree?",
                                                        instructions="Answer briefly.", max_output_tokens=300)
        first = raw.parse()
        assert first.output_text == DEFAULT_TEXT
        assert raw.headers["x-distillguard-action"] == "allow" and raw.headers["x-request-id"]
        with client.responses.stream(model="fixed-model", input="And a B+ tree?",
                                     previous_response_id=first.id) as stream:
            deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
            final = stream.get_final_response()
        assert "".join(deltas) == final.output_text == DEFAULT_TEXT
        # bob may not continue alice's conversation: her answer id is unknown to him
        with pytest.raises(openai.NotFoundError) as err:
            sdk(url, "sk-bob-00002").responses.create(model="fixed-model", input="go on",
                                                      previous_response_id=first.id)
        assert err.value.body["code"] == "previous_response_not_found"
        assert gw.scorer.accounts["alice"].queries == 2
    events = stored_events(tmp_path / "events.duckdb")
    mine = [e for e in events if e["account"] == "alice"]
    assert [e["endpoint"] for e in mine] == ["/v1/responses"] * 2
    assert mine[0]["prompt_text"] == "What is a B-tree?" and mine[0]["system_prompt"] == "Answer briefly."
    assert mine[0]["max_tokens"] == 300 and mine[0]["completion_tokens"] == len(DEFAULT_TEXT.split())
    streamed = orjson.loads(mine[1]["response"])
    assert streamed["status"] == "completed" and streamed["output"][-1]["content"][0]["text"] == DEFAULT_TEXT
    assert mine[1]["n_turns"] == 2                       # a continuation is a multi-turn conversation


def test_embeddings_and_model_retrieve_with_headers_everywhere(tmp_path, upstream):
    with running_gateway(tmp_path, upstream.url) as (gw, url):
        client = sdk(url)
        emb = client.embeddings.with_raw_response.create(model="fixed-model", input=["alpha", "beta"])
        assert emb.headers["x-distillguard-action"] == "allow" and len(emb.parse().data) == 2
        assert len(emb.parse().data[0].embedding) == 64
        model = client.models.with_raw_response.retrieve("fixed-model")
        assert model.parse().id == "fixed-model" and model.headers["x-request-id"]
        assert model.headers["x-distillguard-action"] == "allow"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("no-such-model")
        listed = httpx.get(url + "/v1/models", headers={"authorization": "Bearer sk-alice-0001"})
        assert listed.headers["x-request-id"] and listed.headers["x-distillguard-action"] == "allow"
        denied = httpx.get(url + "/v1/models", headers={"authorization": "Bearer wrong"})
        assert denied.status_code == 401 and denied.headers["x-request-id"]
        assert denied.headers["x-distillguard-action"] == "block"
    events = stored_events(tmp_path / "events.duckdb")
    assert [(e["endpoint"], e["prompt_text"]) for e in events] == [("/v1/embeddings", "alpha\nbeta")]


def test_batch_lines_are_judged_shaped_and_logged_when_fetched(tmp_path, upstream):
    config = ('[[policy.rules]]\nname = "watched"\nwhen = "any"\nactions = ["strip_logprobs", "cap_max_tokens"]\n'
              'max_tokens = 256\n')
    with running_gateway(tmp_path, upstream.url, config_text=config) as (gw, url):
        client = sdk(url)
        up = client.files.with_raw_response.create(file=("in.jsonl", io.BytesIO(batch_file(5))), purpose="batch")
        assert up.headers["x-distillguard-action"] == "modify"
        f = up.parse()
        assert gw.scorer.accounts["alice"].queries == 5                 # every line folded in
        # the file went upstream shaped: every line capped and without logprobs
        sent = upstream.app.store.files[f.id][1].splitlines()
        assert len(sent) == 5 and all(orjson.loads(x)["body"]["max_tokens"] == 256 for x in sent)
        assert not any("logprobs" in orjson.loads(x)["body"] for x in sent)
        batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        batch = client.batches.retrieve(batch.id)
        assert batch.status == "completed" and batch.request_counts.completed == 5
        # bob sees none of it: not the batch, not the files, not in the lists
        bob = sdk(url, "sk-bob-00002")
        for call in (lambda: bob.batches.retrieve(batch.id), lambda: bob.files.content(batch.output_file_id),
                     lambda: bob.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                                completion_window="24h")):
            with pytest.raises(openai.NotFoundError):
                call()
        assert [b.id for b in bob.batches.list().data] == [] and [b.id for b in client.batches.list().data] == [batch.id]
        out = client.files.content(batch.output_file_id).text
        assert out.count("custom_id") == 5
        time.sleep(1.0)     # the loader (every 0.2 s) stores the first fetch before the second is logged
        client.files.content(batch.output_file_id)                      # fetched twice: stored once
    events = stored_events(tmp_path / "events.duckdb")
    answered = [e for e in events if e["endpoint"] == "/v1/chat/completions"]
    assert len(answered) == 5 and {e["account"] for e in answered} == {"alice"}
    assert sorted(orjson.loads(e["extra"])["batch"]["custom_id"] for e in answered) == [f"req-{i}" for i in range(5)]
    assert all(e["completion_tokens"] == len(DEFAULT_TEXT.split()) and e["max_tokens"] == 256 for e in answered)
    assert answered[0]["prompt_text"].startswith("Explain topic")


def test_a_flagged_accounts_batch_is_refused_with_its_reason(tmp_path, upstream):
    with running_gateway(tmp_path, upstream.url) as (gw, url):
        r = httpx.post(f"{url}/admin/accounts/alice/action", headers=ADMIN_H,
                       json={"action": "block", "reason": "harvesting through batches"})
        assert r.status_code == 200, r.text
        client = sdk(url)
        before = len(upstream.app.store.files)
        with pytest.raises(openai.PermissionDeniedError) as err:
            client.files.create(file=("in.jsonl", io.BytesIO(batch_file(3))), purpose="batch")
        assert "batch of 3 requests refused" in err.value.message and "harvesting through batches" in err.value.message
        assert err.value.body["code"] == "manual_block" and len(upstream.app.store.files) == before
        # a malformed line refuses the upload, naming the line
        bad = batch_file(2) + b'{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
        with pytest.raises(openai.BadRequestError) as err:
            sdk(url, "sk-bob-00002").files.create(file=("bad.jsonl", io.BytesIO(bad)), purpose="batch")
        assert "line 3" in err.value.message and err.value.body["code"] == "invalid_batch_file"


def test_batches_are_seen_by_every_worker_sharing_the_log_root(tmp_path, upstream):
    """--workers N: the book of who owns which file and batch lives under the shared log root, so a
    batch uploaded through one worker is retrieved and fetched through another."""
    root = tmp_path / "log-root"
    for worker in ("w0", "w1"):
        (tmp_path / worker).mkdir()
    with running_gateway(tmp_path / "w0", upstream.url, log_dir=root / "w0") as (gw0, url0), \
            running_gateway(tmp_path / "w1", upstream.url, log_dir=root / "w1") as (gw1, url1):
        for gw in (gw0, gw1):
            gw.config.log.shared_dir = root
        f = sdk(url0).files.create(file=("in.jsonl", io.BytesIO(batch_file(2))), purpose="batch")
        batch = sdk(url1).batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                         completion_window="24h")
        assert sdk(url0).batches.retrieve(batch.id).status == "completed"
        assert sdk(url0).files.content(batch.output_file_id).text.count("custom_id") == 2
        with pytest.raises(openai.NotFoundError):
            sdk(url1, "sk-bob-00002").batches.retrieve(batch.id)
    assert (root / "batches" / "book.jsonl").stat().st_mode & 0o777 == 0o600


def test_a_judgement_refusal_tells_the_sdk_not_to_retry(tmp_path, upstream):
    with running_gateway(tmp_path, upstream.url) as (gw, url):
        httpx.post(f"{url}/admin/accounts/alice/action", headers=ADMIN_H, json={"action": "block", "reason": "test"})
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-alice-0001")     # default retries on
        with pytest.raises(openai.PermissionDeniedError) as err:
            client.chat.completions.create(model="fixed-model", messages=[{"role": "user", "content": "hi"}])
        assert err.value.response.headers["x-should-retry"] == "false" and "appeal" in err.value.message
