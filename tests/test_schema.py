"""The event record: validation, timestamps, ids, extras, prompt_view and response_text."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest

from distillguard.errors import FieldError
from distillguard.events.schema import (
    CHAT_ENDPOINT,
    COMPLETIONS_ENDPOINT,
    Event,
    event_from_obj,
    format_ts,
    parse_ts,
    prompt_view,
    response_text,
)

from conftest import BASE_EPOCH

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def field_of(obj) -> str:
    with pytest.raises(FieldError) as info:
        event_from_obj(obj)
    return info.value.field


# ---------------------------------------------------------------- valid records

def test_full_record_fills_every_slot(make_event):
    ev = event_from_obj(make_event(identity={"email": "a@example.com", "org": "o"}))
    assert isinstance(ev, Event)
    assert ev.ts == float(BASE_EPOCH)
    assert ev.account == "acct-1"
    assert ev.key == "key-1" and ev.model == "gpt-test"
    assert ev.ip == "203.0.113.7" and ev.user_agent == "python-requests/2.31"
    assert ev.endpoint == CHAT_ENDPOINT
    assert ev.status == 200
    assert ev.usage == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    assert ev.identity == {"email": "a@example.com", "org": "o"}
    assert ev.response["choices"][0]["message"]["content"] == "Answer 0."
    assert ev.extra == {}


def test_minimal_record_defaults():
    ev = event_from_obj({"ts": BASE_EPOCH, "account": "a", "request": CHAT})
    assert ev.endpoint == CHAT_ENDPOINT
    assert ev.response is None and ev.key is None and ev.model is None and ev.ip is None
    assert ev.user_agent is None and ev.identity is None and ev.usage is None and ev.status is None
    assert ev.extra == {}
    assert re.fullmatch(r"[0-9a-f]{32}", ev.id)


def test_string_response_accepted(make_event):
    assert event_from_obj(make_event(response="plain output")).response == "plain output"


# ---------------------------------------------------------------- required fields

@pytest.mark.parametrize("name", ["ts", "account", "request"])
def test_missing_required_field(make_event, name):
    with pytest.raises(FieldError) as info:
        event_from_obj(make_event(drop=[name]))
    assert info.value.field == name
    assert "missing" in info.value.message


@pytest.mark.parametrize("name", ["account", "request"])
def test_null_required_field_counts_as_missing(make_event, name):
    with pytest.raises(FieldError) as info:
        event_from_obj(make_event(**{name: None}))
    assert info.value.field == name
    assert "missing" in info.value.message


def test_empty_account_rejected(make_event):
    assert field_of(make_event(account="")) == "account"


def test_chat_request_needs_messages(make_event):
    with pytest.raises(FieldError) as info:
        event_from_obj(make_event(request={"max_tokens": 5}))
    assert info.value.field == "request.messages"


@pytest.mark.parametrize("obj", [[], "x", 5, None, True])
def test_record_must_be_an_object(obj):
    with pytest.raises(FieldError) as info:
        event_from_obj(obj)
    assert info.value.field == "<record>"


# ---------------------------------------------------------------- wrong types

WRONG_TYPES = [
    ("ts", True, "ts"),
    ("ts", [], "ts"),
    ("ts", {}, "ts"),
    ("ts", None, "ts"),
    ("ts", "yesterday", "ts"),
    ("account", 5, "account"),
    ("account", ["a"], "account"),
    ("account", {"a": 1}, "account"),
    ("request", "hello", "request"),
    ("request", [], "request"),
    ("request", 5, "request"),
    ("endpoint", 5, "endpoint"),
    ("endpoint", ["/v1/chat/completions"], "endpoint"),
    ("response", 5, "response"),
    ("response", [], "response"),
    ("response", True, "response"),
    ("key", 5, "key"),
    ("model", {"name": "m"}, "model"),
    ("ip", 3232235777, "ip"),
    ("user_agent", ["ua"], "user_agent"),
    ("identity", "someone@example.com", "identity"),
    ("identity", [], "identity"),
    ("usage", "12 tokens", "usage"),
    ("usage", [12], "usage"),
    ("usage", {"prompt_tokens": -1}, "usage.prompt_tokens"),
    ("usage", {"prompt_tokens": 1.5}, "usage.prompt_tokens"),
    ("usage", {"prompt_tokens": "3"}, "usage.prompt_tokens"),
    ("usage", {"completion_tokens": True}, "usage.completion_tokens"),
    ("usage", {"total_tokens": "15"}, "usage.total_tokens"),
    ("status", "200", "status"),
    ("status", 200.0, "status"),
    ("status", True, "status"),
    ("id", 123, "id"),
    ("id", ["x"], "id"),
]


@pytest.mark.parametrize(("name", "value", "expected_field"), WRONG_TYPES)
def test_wrong_type_names_the_field(make_event, name, value, expected_field):
    with pytest.raises(FieldError) as info:
        event_from_obj(make_event(**{name: value}))
    assert info.value.field == expected_field
    assert expected_field in str(info.value)


REQUEST_WRONG = [
    ({"messages": "hi"}, "request.messages"),
    ({"messages": {"role": "user"}}, "request.messages"),
    ({"messages": ["hi"]}, "request.messages[0]"),
    ({"messages": [{"content": "hi"}]}, "request.messages[0].role"),
    ({"messages": [{"role": 1, "content": "hi"}]}, "request.messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "request.messages[0].content"),
    ({"messages": [{"role": "user", "content": {"text": "hi"}}]}, "request.messages[0].content"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
                   {"role": "assistant", "content": "b"}, {"role": "user", "content": 7}]},
     "request.messages[3].content"),
    ({"prompt": 5}, "request.prompt"),
    ({"prompt": {"text": "x"}}, "request.prompt"),
    ({"messages": [], "max_tokens": "100"}, "request.max_tokens"),
    ({"messages": [], "max_tokens": True}, "request.max_tokens"),
    ({"messages": [], "max_tokens": 1.5}, "request.max_tokens"),
    ({"messages": [], "max_completion_tokens": "100"}, "request.max_completion_tokens"),
]


@pytest.mark.parametrize(("request_body", "expected_field"), REQUEST_WRONG)
def test_request_body_errors_name_the_nested_field(make_event, request_body, expected_field):
    with pytest.raises(FieldError) as info:
        event_from_obj(make_event(request=request_body))
    assert info.value.field == expected_field


def test_message_content_may_be_null_or_parts(make_event):
    req = {"messages": [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "t1"}]},
        {"role": "user", "content": [{"type": "text", "text": "look at"},
                                     {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
                                     {"type": "text", "text": "this picture"}]},
    ]}
    ev = event_from_obj(make_event(request=req))
    view = prompt_view(ev.request)
    assert view.prompt_text == "look at\nthis picture"
    assert view.n_messages == 2 and view.n_turns == 1


# ---------------------------------------------------------------- completions

def test_completions_endpoint_inferred_from_prompt(make_event):
    ev = event_from_obj(make_event(request={"prompt": "Once upon a time", "max_tokens": 10}))
    assert ev.endpoint == COMPLETIONS_ENDPOINT
    view = prompt_view(ev.request)
    assert view.prompt_text == "Once upon a time"
    assert view.n_turns == 1 and view.n_messages == 0 and view.system_prompt is None
    assert view.max_tokens == 10


def test_completions_prompt_as_array(make_event):
    ev = event_from_obj(make_event(request={"prompt": ["first", "second", 42]}))
    assert ev.endpoint == COMPLETIONS_ENDPOINT
    assert prompt_view(ev.request).prompt_text == "first\nsecond"


def test_explicit_endpoint_kept(make_event):
    ev = event_from_obj(make_event(endpoint=COMPLETIONS_ENDPOINT, request={"prompt": "x"}))
    assert ev.endpoint == COMPLETIONS_ENDPOINT
    ev = event_from_obj(make_event(endpoint="/v1/responses"))
    assert ev.endpoint == "/v1/responses"


def test_messages_win_over_prompt_for_endpoint(make_event):
    ev = event_from_obj(make_event(request={"prompt": "p", "messages": [{"role": "user", "content": "m"}]}))
    assert ev.endpoint == CHAT_ENDPOINT
    assert prompt_view(ev.request).prompt_text == "m"


# ---------------------------------------------------------------- timestamps

INSTANT = 1791201600.0  # 2026-10-05T12:00:00Z


@pytest.mark.parametrize("value", [
    1791201600,
    1791201600.0,
    "2026-10-05T12:00:00Z",
    "2026-10-05T12:00:00+00:00",
    "2026-10-05T14:00:00+02:00",
    "2026-10-05T06:30:00-05:30",
    "2026-10-05T12:00:00",          # naive means UTC
    "2026-10-05T12:00:00.000Z",
])
def test_timestamp_forms_of_one_instant(value):
    assert parse_ts(value) == INSTANT


def test_fractional_seconds():
    assert parse_ts("2026-10-05T12:00:00.250Z") == pytest.approx(INSTANT + 0.25, abs=1e-9)
    assert parse_ts(INSTANT + 0.5) == INSTANT + 0.5


@pytest.mark.parametrize("value", [
    1791201600000,      # milliseconds
    1791201600000.0,
    1791201600000000,   # microseconds
    0,
    -5,
    86400,
    9_999_999_999,      # year 2286
])
def test_epoch_out_of_range_rejected(value):
    with pytest.raises(FieldError) as info:
        parse_ts(value)
    assert info.value.field == "ts"
    assert "out of range" in info.value.message


@pytest.mark.parametrize("value", [True, False, None, [], {}, "", "12:00", "2026-13-45T00:00:00Z", "not a time"])
def test_bad_timestamps_rejected(value):
    with pytest.raises(FieldError) as info:
        parse_ts(value)
    assert info.value.field == "ts"


def test_ms_epoch_rejected_in_record(make_event):
    assert field_of(make_event(ts=1791201600123)) == "ts"


def test_format_ts_is_rfc3339_utc_millis():
    assert format_ts(INSTANT) == "2026-10-05T12:00:00.000Z"
    assert format_ts(INSTANT + 0.25) == "2026-10-05T12:00:00.250Z"
    assert parse_ts(format_ts(INSTANT + 0.123)) == pytest.approx(INSTANT + 0.123, abs=1e-6)


# ---------------------------------------------------------------- ids

def test_id_derived_deterministically(make_event):
    a = event_from_obj(make_event())
    b = event_from_obj(make_event())
    assert a.id == b.id
    assert re.fullmatch(r"[0-9a-f]{32}", a.id)


def test_id_ignores_key_order_and_metadata(make_event):
    rec = make_event()
    reordered = {k: rec[k] for k in reversed(list(rec))}
    reordered["request"] = {k: rec["request"][k] for k in reversed(list(rec["request"]))}
    assert event_from_obj(reordered).id == event_from_obj(rec).id
    # id depends on ts, account, request, response only
    assert event_from_obj(make_event(ip="198.51.100.1", status=500)).id == event_from_obj(rec).id


@pytest.mark.parametrize("change", [
    {"ts": BASE_EPOCH + 1},
    {"account": "acct-2"},
    {"request": {"messages": [{"role": "user", "content": "different"}]}},
    {"response": "different"},
])
def test_id_changes_with_content(make_event, change):
    assert event_from_obj(make_event(**change)).id != event_from_obj(make_event()).id


@pytest.mark.parametrize("ts", ["2026-10-05T12:00:00Z", "2026-10-05T14:00:00+02:00", "2026-10-05T12:00:00",
                                1791201600.0])
def test_id_equal_for_epoch_and_rfc3339_of_same_instant(make_event, ts):
    assert event_from_obj(make_event(ts=ts)).id == event_from_obj(make_event(ts=1791201600)).id


def test_id_equal_for_fractional_instant(make_event):
    a = event_from_obj(make_event(ts="2026-10-05T12:00:00.123Z"))
    b = event_from_obj(make_event(ts=1791201600.123))
    assert a.id == b.id


def test_explicit_id_kept_and_empty_id_derived(make_event):
    assert event_from_obj(make_event(id="evt-42")).id == "evt-42"
    derived = event_from_obj(make_event()).id
    assert event_from_obj(make_event(id="")).id == derived
    assert event_from_obj(make_event(id=None)).id == derived


# ---------------------------------------------------------------- extras and to_dict

def test_unknown_fields_kept_in_extra(make_event):
    ev = event_from_obj(make_event(region="eu-west", trace={"span": [1, 2]}, flag=None))
    assert ev.extra == {"region": "eu-west", "trace": {"span": [1, 2]}, "flag": None}


def test_unknown_field_on_minimal_record_kept():
    ev = event_from_obj({"ts": BASE_EPOCH, "account": "a", "request": CHAT, "x": 1})
    assert ev.extra == {"x": 1}


def test_to_dict_shape(make_event):
    d = event_from_obj(make_event(ts="2026-10-05T14:00:00.5+02:00", region="eu")).to_dict()
    assert d["ts"] == "2026-10-05T12:00:00.500Z"
    assert d["region"] == "eu"
    assert d["endpoint"] == CHAT_ENDPOINT
    assert re.fullmatch(r"[0-9a-f]{32}", d["id"])
    minimal = event_from_obj({"ts": BASE_EPOCH, "account": "a", "request": CHAT}).to_dict()
    assert set(minimal) == {"id", "ts", "account", "endpoint", "request"}


def test_to_dict_round_trip(make_event):
    ev = event_from_obj(make_event(ts="2026-10-05T12:00:00.125Z", identity={"email": "e@x.org"},
                                   region="eu", trace={"a": [1, {"b": None}]}, response="text out"))
    back = event_from_obj(ev.to_dict())
    assert back == ev
    assert back.extra == {"region": "eu", "trace": {"a": [1, {"b": None}]}}


@pytest.mark.parametrize("ts", ["0001-01-01T00:00:00Z", "0999-06-01T00:00:00Z"])
def test_accepted_timestamp_must_survive_to_dict(make_event, ts):
    """Regression: RFC 3339 strings skip the epoch range check, and format_ts writes years < 1000
    without zero padding ("1-01-01T00:00:00.000Z"), so a record event_from_obj accepts produces a
    to_dict() (and a JsonlWriter line) that event_from_obj then rejects."""
    try:
        ev = event_from_obj(make_event(ts=ts))
    except FieldError as exc:  # rejecting it (like out-of-range epochs) is an acceptable fix
        assert exc.field == "ts"
        return
    assert event_from_obj(ev.to_dict()) == ev


# ---------------------------------------------------------------- prompt_view

def test_prompt_view_chat_conversation():
    req = {"messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
        {"role": "assistant", "content": "second answer"},
        {"role": "user", "content": "third question"},
    ], "max_tokens": 512}
    view = prompt_view(req)
    assert view.system_prompt == "Be terse."
    assert view.prompt_text == "third question"
    assert view.n_turns == 3
    assert view.n_messages == 6
    assert view.max_tokens == 512
    assert view.logprobs is False and view.top_logprobs is None and view.has_tools is False


def test_prompt_view_developer_prompt_and_first_system_wins():
    view = prompt_view({"messages": [{"role": "developer", "content": "dev rules"},
                                     {"role": "system", "content": "later"},
                                     {"role": "user", "content": "q"}]})
    assert view.system_prompt == "dev rules"
    view = prompt_view({"messages": [{"role": "system", "content": [{"type": "text", "text": "sys part"}]},
                                     {"role": "user", "content": "q"}]})
    assert view.system_prompt == "sys part"


def test_prompt_view_last_user_turn_even_if_assistant_last():
    view = prompt_view({"messages": [{"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"},
                                     {"role": "user", "content": "u2"}, {"role": "assistant", "content": "prefill"}]})
    assert view.prompt_text == "u2"
    assert view.n_turns == 2


def test_prompt_view_no_user_turn():
    # A system-message-only request is a prompt (issue 14: synthetic-data tools send their
    # whole instruction so), not an empty one.
    view = prompt_view({"messages": [{"role": "system", "content": "Write a haiku about rain."}]})
    assert view.prompt_text == "Write a haiku about rain." and view.n_turns == 0 and view.n_messages == 1
    view = prompt_view({"messages": [{"role": "system", "content": "rules"},
                                     {"role": "developer", "content": [{"type": "text", "text": "Solve x^2=4."}]},
                                     {"role": "assistant", "content": "prefill"}]})
    assert view.prompt_text == "Solve x^2=4." and view.system_prompt == "rules"
    view = prompt_view({"messages": [{"role": "system", "content": "  "}, {"role": "assistant", "content": "a"}]})
    assert view.prompt_text == ""


def test_prompt_view_max_completion_tokens():
    assert prompt_view({"messages": [], "max_completion_tokens": 2048}).max_tokens == 2048
    assert prompt_view({"messages": [], "max_tokens": 7, "max_completion_tokens": 2048}).max_tokens == 7
    assert prompt_view({"messages": []}).max_tokens is None


def test_prompt_view_chat_logprobs():
    view = prompt_view({"messages": [], "logprobs": True})
    assert view.logprobs is True and view.top_logprobs is None
    view = prompt_view({"messages": [], "logprobs": True, "top_logprobs": 20})
    assert view.logprobs is True and view.top_logprobs == 20
    view = prompt_view({"messages": [], "top_logprobs": 5})
    assert view.logprobs is True and view.top_logprobs == 5
    view = prompt_view({"messages": [], "logprobs": False})
    assert view.logprobs is False and view.top_logprobs is None


def test_prompt_view_completions_integer_logprobs():
    view = prompt_view({"prompt": "x", "logprobs": 5})
    assert view.logprobs is True
    assert view.top_logprobs == 5


@pytest.mark.parametrize(("request_body", "expected"), [
    ({"messages": [], "tools": [{"type": "function", "function": {"name": "f"}}]}, True),
    ({"messages": [], "functions": [{"name": "f"}]}, True),
    ({"messages": [], "tools": []}, False),
    ({"messages": []}, False),
])
def test_prompt_view_tools(request_body, expected):
    assert prompt_view(request_body).has_tools is expected


# ---------------------------------------------------------------- response_text

@pytest.mark.parametrize(("response", "expected"), [
    ({"choices": [{"message": {"role": "assistant", "content": "chat out"}}]}, "chat out"),
    ({"choices": [{"message": {"role": "assistant", "content": [{"type": "text", "text": "a"},
                                                                 {"type": "text", "text": "b"}]}}]}, "a\nb"),
    ({"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": []}}]}, ""),
    ({"choices": [{"text": "completion out", "index": 0}]}, "completion out"),
    ({"choices": [{"message": {"content": "first"}}, {"message": {"content": "second"}}]}, "first"),
    ("just the text", "just the text"),
    ({"text": "top-level text"}, "top-level text"),
    ({"choices": [], "text": "fallback"}, "fallback"),
    ({"choices": []}, ""),
    ({"choices": ["weird"]}, ""),
    ({"choices": "weird"}, ""),
    ({"choices": [{"text": 5}]}, ""),
    ({"error": {"message": "rate limited"}}, ""),
    ({}, ""),
    (None, ""),
    (42, ""),
    (["a", "b"], ""),
])
def test_response_text(response, expected):
    assert response_text(response) == expected


def test_parse_ts_of_naive_equals_utc():
    naive = datetime(2026, 10, 5, 12, 0, 0)
    assert parse_ts(naive.isoformat()) == datetime(2026, 10, 5, 12, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize("request_body, expected", [
    ({"user": "cus_1"}, "cus_1"),
    ({"safety_identifier": "sid-9", "user": "cus_1"}, "sid-9"),     # the newer field wins
    ({"metadata": {"user_id": "anthropic-style"}}, "anthropic-style"),
    ({"user": 42}, None),                                              # not a string: ignored, not an error
    ({"user": "   "}, None),
    ({"user": "", "metadata": {"user_id": "m"}}, "m"),
    ({"metadata": "not an object"}, None),
    ({}, None),
    ({"user": "ü" * 1000}, "ü" * 256),                                # capped
])
def test_end_user_id_read_from_the_request(request_body, expected):
    from distillguard.events.schema import end_user_of, prompt_view

    body = {"messages": [{"role": "user", "content": "hi"}], **request_body}
    assert end_user_of(body) == expected
    assert prompt_view(body).end_user == expected
