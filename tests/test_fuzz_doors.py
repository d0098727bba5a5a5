"""Generated bad input against the newer doors of the API: the multipart reader, the batch file
reader, the Responses/embeddings chat-shaped view, and /v1/responses, /v1/embeddings, /v1/files
and /v1/batches on a real gateway on 127.0.0.1. Parsers raise only their one error type (naming
the line for a batch file); every HTTP answer is a success or an OpenAI-format JSON error, never
a 5xx other than a deliberate 503, and always carries x-request-id."""

from __future__ import annotations

import re

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from distillguard.errors import FieldError
from distillguard.events.multipart import build_multipart, parse_multipart
from distillguard.events.openai_shapes import as_chat
from distillguard.events.schema import prompt_view
from distillguard.gateway.batches import BATCH_ENDPOINTS, read_batch_lines
from distillguard.gateway.server import ServerThread
from distillguard.gateway.wal import iter_log_records
from distillguard.serve.fixed import FixedCompletionServer
from gateway_support import running_gateway
from hostile import ANY_JSON, JSON, NUMBERS, TEXT, encode, nest

KEY = {"authorization": "Bearer sk-alice-0001"}

# ---- strategies: near-valid Responses / embeddings bodies and batch files, each with parts broken

ITEM = (TEXT | ANY_JSON | st.fixed_dictionaries(
    {"type": st.sampled_from(["message", "function_call", "function_call_output", "reasoning", "input_text"])
     | TEXT | ANY_JSON},
    optional={"role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]) | ANY_JSON,
              "content": TEXT | st.lists(st.fixed_dictionaries({"type": TEXT, "text": TEXT | ANY_JSON}), max_size=3)
              | ANY_JSON,
              "output": TEXT | ANY_JSON, "name": TEXT, "arguments": TEXT | ANY_JSON, "call_id": TEXT}))
RESPONSES_BODY = st.fixed_dictionaries(
    {"input": TEXT | st.lists(ITEM, max_size=4) | ANY_JSON},
    optional={"model": TEXT | ANY_JSON, "instructions": TEXT | ANY_JSON, "previous_response_id": TEXT | ANY_JSON,
              "max_output_tokens": NUMBERS | ANY_JSON, "stream": st.booleans() | ANY_JSON,
              "include": st.lists(st.sampled_from(["message.output_text.logprobs", "reasoning.encrypted_content"])
                                  | TEXT, max_size=3) | ANY_JSON,
              "reasoning": st.fixed_dictionaries({}, optional={"effort": TEXT, "summary": TEXT}) | ANY_JSON,
              "top_logprobs": NUMBERS | ANY_JSON, "tools": ANY_JSON, "store": st.booleans() | ANY_JSON,
              "text": ANY_JSON, "metadata": ANY_JSON, "user": TEXT | ANY_JSON, "messages": ANY_JSON,
              "prompt": ANY_JSON})
EMBEDDINGS_BODY = st.fixed_dictionaries(
    {"input": TEXT | st.lists(TEXT | st.integers() | st.lists(st.integers(), max_size=5), max_size=5) | ANY_JSON},
    optional={"model": TEXT | ANY_JSON, "encoding_format": st.sampled_from(["float", "base64"]) | TEXT | ANY_JSON,
              "dimensions": NUMBERS | ANY_JSON, "user": TEXT | ANY_JSON})
DOOR_BODY = RESPONSES_BODY | EMBEDDINGS_BODY | st.dictionaries(TEXT, ANY_JSON, max_size=4)

CHAT_LINE_BODY = st.fixed_dictionaries({"messages": st.just([{"role": "user", "content": "hi"}])},
                                       optional={"max_tokens": NUMBERS | ANY_JSON, "logprobs": ANY_JSON,
                                                 "model": TEXT | ANY_JSON})
BATCH_LINE = st.fixed_dictionaries(
    {"custom_id": TEXT | ANY_JSON, "url": st.sampled_from(BATCH_ENDPOINTS) | TEXT | ANY_JSON,
     "body": CHAT_LINE_BODY | RESPONSES_BODY | EMBEDDINGS_BODY | ANY_JSON},
    optional={"method": st.sampled_from(["POST", "GET"]) | TEXT})
LINE_BYTES = BATCH_LINE.map(encode) | ANY_JSON.map(encode) | st.binary(max_size=80) | st.sampled_from(
    [b"", b" ", b"\xff\xfe", b"{", b"[]", b"null", b'{"body": {}}', "\u2028".encode(), b"\r", b"\x00"])
BATCH_FILE = st.lists(LINE_BYTES, max_size=6).map(b"\n".join) | st.binary(max_size=400)

BOUNDARY = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e, exclude_characters='"'), min_size=1,
                   max_size=70) | st.sampled_from(["", "é", "𝕏", "a" * 300, "--", "\x00"])
CONTENT_TYPE = BOUNDARY.map(lambda b: f"multipart/form-data; boundary={b}") | BOUNDARY.map(
    lambda b: f'multipart/form-data; boundary="{b}"') | st.sampled_from(
    ["", "multipart/form-data", "application/json", "multipart/form-data; boundary=", "MULTIPART/FORM-DATA;BOUNDARY=x",
     "multipart/form-data; boundary=x; boundary=y", "multipart/form-data; charset=utf-8"]) | TEXT
PART_HEADER = st.sampled_from([
    'Content-Disposition: form-data; name="file"; filename="in.jsonl"',
    'Content-Disposition: form-data; name="purpose"', "Content-Disposition: form-data",
    "Content-Disposition: form-data; filename*=UTF-8''%F0%9D%95%8F.jsonl; name=file",
    'Content-Disposition: attachment; name="file"', "Content-Transfer-Encoding: base64",
    "Content-Transfer-Encoding: quoted-printable", "Content-Type: text/plain; charset=utf-16",
    "Content-Type: multipart/mixed; boundary=inner", 'Content-Disposition: form-data; name="fil\u00e9"',
]) | TEXT.map(lambda t: "X-" + t)


@st.composite
def multipart_bodies(draw) -> tuple[bytes, str]:
    """A multipart body that is right in form, wrong in parts, or not multipart at all."""
    boundary = draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e, exclude_characters='";\\'),
                            min_size=1, max_size=40))
    parts = []
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        headers = draw(st.lists(PART_HEADER, max_size=3))
        payload = draw(BATCH_FILE | TEXT.map(str.encode) | st.just(b"batch"))
        parts.append(f"--{boundary}\r\n".encode() + "\r\n".join(headers).encode("utf-8", "replace")
                     + b"\r\n\r\n" + payload + b"\r\n")
    ending = draw(st.sampled_from([f"--{boundary}--\r\n".encode(), b"", f"--{boundary}".encode(), b"--\r\n"]))
    body = b"".join(parts) + ending
    if draw(st.booleans()):
        body += draw(st.binary(max_size=50))
    content_type = draw(st.just(f"multipart/form-data; boundary={boundary}") | CONTENT_TYPE)
    return body, content_type


SENDABLE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")


def valid_upload(data: bytes, purpose: str = "batch") -> tuple[bytes, str]:
    return build_multipart({"purpose": purpose}, data, "in.jsonl")


UPLOAD = multipart_bodies() | BATCH_FILE.map(valid_upload) | st.tuples(st.binary(max_size=300), CONTENT_TYPE)

# ---- the parsers alone


@given(multipart_bodies() | st.tuples(st.binary(max_size=2000), CONTENT_TYPE))
def test_parse_multipart_raises_only_value_error(case):
    body, content_type = case
    try:
        fields, data, name = parse_multipart(body, content_type)
    except ValueError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
    assert data is None or isinstance(data, bytes)
    assert isinstance(name, str)


@given(BATCH_FILE, TEXT.filter(lambda t: t.isprintable()), st.sampled_from(["batch", "fine-tune", "", "é"]))
def test_multipart_round_trip(data, filename, purpose):
    """What the gateway rewrites and forwards reads back as the same file and fields."""
    body, content_type = build_multipart({"purpose": purpose}, data, filename or "x.jsonl")
    fields, got, _ = parse_multipart(body, content_type)
    assert got == data and fields == {"purpose": purpose}


def test_parse_multipart_huge_upload():
    data = b'{"custom_id": "a", "url": "/v1/embeddings", "body": {"input": "x"}}\n' * 100_000    # ~7 MB
    body, content_type = build_multipart({"purpose": "batch"}, data, "big.jsonl")
    assert parse_multipart(body, content_type)[1] == data
    with pytest.raises(ValueError):
        parse_multipart(body, "multipart/form-data")


@given(BATCH_FILE)
def test_read_batch_lines_raises_only_field_error_naming_a_line(data):
    try:
        lines = read_batch_lines(data)
    except FieldError as exc:
        assert exc.field == "file" or exc.field.startswith("line ")
        return
    assert lines and all(item["url"] in BATCH_ENDPOINTS and isinstance(item["custom_id"], str) for item in lines)


def test_read_batch_lines_names_the_deep_line():
    deep = encode({"custom_id": "d", "url": "/v1/chat/completions",
                   "body": {"messages": [{"role": "user", "content": "x"}], "metadata": nest(1100)}})
    ok = b'{"custom_id": "a", "url": "/v1/embeddings", "body": {"input": "x"}}'
    with pytest.raises(FieldError) as err:
        read_batch_lines(ok + b"\n" + deep)
    assert err.value.field.startswith("line 2")


@given(DOOR_BODY)
def test_as_chat_and_prompt_view_never_raise(body):
    view = as_chat(body)
    assert isinstance(view, dict)
    pv = prompt_view(body)
    assert isinstance(pv.prompt_text, str) and pv.n_turns >= 0


# ---- the doors, live


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    work = tmp_path_factory.mktemp("fuzz-doors")
    with ServerThread(FixedCompletionServer(chunks=3)) as upstream, \
            running_gateway(work, upstream.url, config_text="[log]\nsink = 'none'\nkeep_segments = true\n") as (gw, url), \
            httpx.Client(base_url=url, timeout=30) as client:
        yield gw, client


def check(gw, r: httpx.Response) -> None:
    assert r.headers.get("x-request-id"), (r.status_code, dict(r.headers), r.text[:200])
    assert r.status_code < 500 or r.status_code == 503, (r.status_code, r.text[:300])
    if r.status_code >= 300:
        assert r.headers["content-type"].startswith("application/json"), r.text[:200]
        error = r.json()["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["code"], str) and isinstance(error["type"], str) and "param" in error


def logged_ids(gw) -> set[str]:
    assert gw.log.flush()
    return {orjson.loads(line)["id"] for line in iter_log_records(gw.config.log.dir)}


@given(st.sampled_from(["/v1/responses", "/v1/embeddings"]), DOOR_BODY)
def test_responses_and_embeddings_bodies(gateway, endpoint, body):
    gw, client = gateway
    r = client.post(endpoint, content=encode(body), headers={**KEY, "content-type": "application/json"})
    check(gw, r)
    if r.status_code == 200:
        if r.headers["content-type"].startswith("text/event-stream"):
            assert "response.completed" in r.text or "response.failed" in r.text or "error" in r.text
        assert r.headers["x-request-id"] in logged_ids(gw)


@given(RESPONSES_BODY.map(lambda b: {**b, "stream": True}))
def test_streamed_responses_bodies(gateway, body):
    gw, client = gateway
    r = client.post("/v1/responses", content=encode(body), headers={**KEY, "content-type": "application/json"})
    check(gw, r)
    if r.status_code == 200:
        assert r.headers["x-request-id"] in logged_ids(gw)


@given(UPLOAD, st.sampled_from([KEY, {"authorization": "Bearer sk-bob-00002"}, {}]))
def test_file_uploads(gateway, case, key):
    gw, client = gateway
    body, content_type = case
    # a header value the client's HTTP library (h11) will not send is not a case for the gateway
    headers = {**key, "content-type": content_type} if SENDABLE.fullmatch(content_type) else key
    r = client.post("/v1/files", content=body, headers=headers)
    check(gw, r)
    if r.status_code == 200:
        assert isinstance(r.json()["id"], str)


SEGMENT = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e, exclude_characters="/?#%"),
                  min_size=1, max_size=20) | st.sampled_from(["file-x", "batch_x", "..", "é"])


@given(st.sampled_from(["POST /v1/batches", "GET /v1/batches", "GET /v1/files", "GET /v1/batches/{x}",
                        "POST /v1/batches/{x}/cancel", "GET /v1/files/{x}", "GET /v1/files/{x}/content",
                        "DELETE /v1/files/{x}", "PUT /v1/batches", "DELETE /v1/batches/{x}", "PATCH /v1/files"]),
       SEGMENT, JSON | st.fixed_dictionaries({"input_file_id": TEXT | ANY_JSON},
                                             optional={"endpoint": TEXT | ANY_JSON, "completion_window": TEXT,
                                                       "metadata": ANY_JSON}),
       st.dictionaries(st.sampled_from(["limit", "after", "purpose", "order"]), TEXT, max_size=3),
       st.sampled_from([KEY, {"authorization": "Bearer nope"}, {}]))
def test_batches_and_files_api(gateway, route, segment, body, params, key):
    gw, client = gateway
    method, path = route.split(" ")
    r = client.request(method, path.replace("{x}", segment), content=encode(body), params=params, headers=key)
    check(gw, r)


def test_a_real_batch_round_trip_still_works_after_fuzzing(gateway):
    """The fuzzing above leaves the gateway serving: a valid batch uploads, runs and is logged."""
    gw, client = gateway
    data = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", ' \
           b'"body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}\n'
    body, content_type = valid_upload(data)
    up = client.post("/v1/files", content=body, headers={**KEY, "content-type": content_type})
    check(gw, up)
    assert up.status_code == 200, up.text
    batch = client.post("/v1/batches", json={"input_file_id": up.json()["id"], "endpoint": "/v1/chat/completions",
                                             "completion_window": "24h"}, headers=KEY)
    assert batch.status_code == 200, batch.text
    out = client.get(f"/v1/files/{batch.json()['output_file_id']}/content", headers=KEY)
    check(gw, out)
    assert out.status_code == 200 and b'"custom_id":"a"' in out.content.replace(b" ", b"")
