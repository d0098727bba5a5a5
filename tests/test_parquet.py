"""Parquet event files: round trip, bad files, missing optional columns."""

from __future__ import annotations

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillguard.errors import BadInputError
from distillguard.events.columns import EVENT_SCHEMA
from distillguard.events.parquet import iter_parquet, iter_parquet_tables, write_parquet
from distillguard.events.schema import COMPLETIONS_ENDPOINT, event_from_obj


@pytest.fixture
def varied_events(make_event):
    records = [
        make_event(0),
        make_event(1, ts="2026-10-05T12:00:01.123456Z", identity={"email": "x@example.com", "payment": "card-9"},
                   region="eu-west", trace={"spans": [1, 2, {"n": None}]}),
        make_event(2, response="a plain string response", usage={"prompt_tokens": 0}),
        make_event(3, request={"prompt": ["a", "b"], "logprobs": 5, "max_tokens": 9}, response=None,
                   drop=["key", "model", "ip", "user_agent", "usage", "status"]),
        make_event(4, id="explicit-id", account="账户-🦊", status=429, identity={},
                   request={"messages": [{"role": "user", "content": [{"type": "text", "text": "parts"}]}],
                            "tools": [{"type": "function"}]}),
    ]
    return [event_from_obj(r) for r in records]


def test_round_trip_preserves_every_field(tmp_path, varied_events):
    path = tmp_path / "sub" / "events.parquet"
    assert write_parquet(varied_events, path) == len(varied_events)
    assert path.read_bytes()[:4] == b"PAR1"
    back = list(iter_parquet(path))
    assert back == varied_events
    assert back[1].extra == {"region": "eu-west", "trace": {"spans": [1, 2, {"n": None}]}}
    assert back[1].identity == {"email": "x@example.com", "payment": "card-9"}
    assert back[1].ts == varied_events[1].ts
    assert back[2].response == "a plain string response"
    assert back[3].response is None and back[3].usage is None and back[3].status is None
    assert back[3].endpoint == COMPLETIONS_ENDPOINT
    assert back[4].identity == {} and back[4].status == 429


def test_round_trip_in_small_row_groups(tmp_path, make_event):
    events = [event_from_obj(make_event(i)) for i in range(25)]
    path = tmp_path / "e.parquet"
    assert write_parquet(events, path, batch_size=4) == 25
    assert pq.ParquetFile(path).metadata.num_row_groups == 7
    tables = list(iter_parquet_tables(path, batch_size=10))
    assert [t.num_rows for t in tables] == [10, 10, 5]
    assert all(t.schema == EVENT_SCHEMA for t in tables)
    assert list(iter_parquet(path)) == events


def test_write_empty(tmp_path):
    path = tmp_path / "empty.parquet"
    assert write_parquet([], path) == 0
    assert list(iter_parquet(path)) == []


def test_derived_columns_written(tmp_path, varied_events):
    path = tmp_path / "e.parquet"
    write_parquet(varied_events, path)
    t = pq.read_table(path).to_pydict()
    assert t["prompt_text"][0] == "Question number 0?"
    assert t["system_prompt"][0] == "You are a helpful assistant."
    assert t["n_turns"][0] == 1 and t["n_messages"][0] == 2 and t["max_tokens"][0] == 256
    assert t["prompt_text"][3] == "a\nb"
    assert t["logprobs"][3] is True and t["max_tokens"][3] == 9
    assert t["has_tools"][4] is True and t["has_tools"][0] is False
    assert t["prompt_tokens"][0] == 12 and t["completion_tokens"][0] == 3
    assert t["prompt_tokens"][3] is None
    assert orjson.loads(t["response"][2]) == "a plain string response"
    assert t["extra"][0] is None
    assert orjson.loads(t["extra"][1]) == {"region": "eu-west", "trace": {"spans": [1, 2, {"n": None}]}}


def test_not_a_parquet_file(tmp_path, write_jsonl, make_event):
    path = write_jsonl("events.parquet", [make_event(0)])
    with pytest.raises(BadInputError) as info:
        list(iter_parquet(path))
    assert info.value.source == str(path)
    assert "Parquet" in info.value.message


def test_truncated_parquet_file(tmp_path, varied_events):
    path = tmp_path / "e.parquet"
    write_parquet(varied_events, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError):
        list(iter_parquet(path))


def test_missing_path_and_directory(tmp_path):
    for path in (tmp_path / "nope.parquet", tmp_path):
        with pytest.raises(BadInputError) as info:
            list(iter_parquet(path))
        assert info.value.source == str(path)


def test_parquet_without_event_columns(tmp_path):
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"id": ["a"], "name": ["x"], "value": [1]}), path)
    with pytest.raises(BadInputError) as info:
        list(iter_parquet(path))
    assert info.value.message.endswith("column(s) ts, account, request")


def test_parquet_missing_optional_columns_is_conformed(tmp_path):
    path = tmp_path / "minimal.parquet"
    table = pa.table({
        "id": ["e1", "e2"],
        "ts": pa.array([1791201600_000000, 1791201601_500000], type=pa.timestamp("us")),
        "account": ["a", "b"],
        "request": [orjson.dumps({"messages": [{"role": "user", "content": "q"}]}).decode(),
                    orjson.dumps({"prompt": "p"}).decode()],
        "status": pa.array([200, None], type=pa.int64()),   # wider type than the schema: cast
    })
    pq.write_table(table, path)
    (conformed,) = list(iter_parquet_tables(path))
    assert conformed.schema == EVENT_SCHEMA
    assert conformed.column("prompt_text").to_pylist() == ["q", "p"]  # derived from request, not left null
    events = list(iter_parquet(path))
    assert [e.id for e in events] == ["e1", "e2"]
    assert [e.ts for e in events] == [1791201600.0, 1791201601.5]
    assert events[0].request == {"messages": [{"role": "user", "content": "q"}]}
    assert events[0].status == 200 and events[1].status is None
    for ev in events:
        assert ev.response is None and ev.key is None and ev.model is None and ev.identity is None
        assert ev.usage is None and ev.extra == {}


def _minimal_parquet(path):
    pq.write_table(pa.table({
        "id": ["e1", "e2"],
        "ts": pa.array([1791201600_000000, 1791201601_000000], type=pa.timestamp("us")),
        "account": ["a", "b"],
        "request": [orjson.dumps({"messages": [{"role": "system", "content": "s"},
                                               {"role": "user", "content": "q"}], "max_tokens": 7}).decode(),
                    orjson.dumps({"prompt": "p"}).decode()],
    }), path)


def test_conformed_parquet_gets_default_endpoint(tmp_path):
    """Regression: a Parquet file without an ``endpoint`` column yields events whose endpoint is
    None (events_from_table copies the null), although Event.endpoint is a str defaulting to
    /v1/chat/completions (DESIGN: "default /v1/chat/completions"); event_from_obj would infer
    /v1/completions for a ``prompt`` body."""
    path = tmp_path / "minimal.parquet"
    _minimal_parquet(path)
    events = list(iter_parquet(path))
    assert [e.endpoint for e in events] == ["/v1/chat/completions", COMPLETIONS_ENDPOINT]


def test_conformed_parquet_has_derived_columns(tmp_path):
    """Regression: _conform fills absent derived columns (prompt_text, system_prompt, n_turns,
    n_messages, max_tokens, logprobs, has_tools) with nulls instead of computing them from
    ``request``, so a Parquet file written by another tool loads into the store with null
    prompt_text/n_turns and the detectors that read those columns see nothing."""
    path = tmp_path / "minimal.parquet"
    _minimal_parquet(path)
    (t,) = list(iter_parquet_tables(path))
    cols = t.to_pydict()
    assert cols["prompt_text"] == ["q", "p"]
    assert cols["system_prompt"] == ["s", None]
    assert cols["n_turns"] == [1, 1]
    assert cols["max_tokens"] == [7, None]
    assert cols["logprobs"] == [False, False]


def test_parquet_from_before_the_end_user_column_gets_it_from_requests(tmp_path, make_event):
    events = [event_from_obj(make_event(i, request={"messages": [{"role": "user", "content": f"q{i}"}],
                                                     **({"user": f"cus_{i % 2}"} if i < 4 else {})}))
              for i in range(6)]
    path = tmp_path / "old.parquet"
    write_parquet(events, path)
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["end_user"]), path)
    (out,) = list(iter_parquet_tables(path))
    assert out.schema == EVENT_SCHEMA
    assert out.column("end_user").to_pylist() == ["cus_0", "cus_1", "cus_0", "cus_1", None, None]
