"""Generated bad input for the event-line parser (ingest): whatever a line holds, it becomes an
event that every writer can serialise, or a quarantined bad line; never an exception escaping."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from distillguard.errors import BadInputError, FieldError
from distillguard.events.columns import ColumnBuilder
from distillguard.events.jsonl import Quarantine, ReadStats, iter_jsonl
from distillguard.events.schema import MAX_JSON_DEPTH, event_from_obj, nesting_exceeds
from hostile import ANY_JSON, CHAT_BODY, TEXT, encode, nest

RECORD = st.fixed_dictionaries(
    {"ts": st.floats(1e9, 2e9) | ANY_JSON, "account": TEXT | ANY_JSON, "request": CHAT_BODY | ANY_JSON},
    optional={"response": ANY_JSON, "id": TEXT | ANY_JSON, "usage": ANY_JSON, "status": ANY_JSON,
              "identity": ANY_JSON, "endpoint": TEXT | ANY_JSON, "extra_field": ANY_JSON, "ip": ANY_JSON})
LINE = st.builds(encode, RECORD) | st.builds(encode, ANY_JSON) | st.binary(max_size=200)


@given(RECORD)
def test_a_record_is_an_event_that_serialises_or_a_field_error(record):
    try:
        event = event_from_obj(orjson.loads(encode(record)))
    except orjson.JSONDecodeError:
        return                                   # nested past orjson's parse limit: malformed JSON
    except FieldError as exc:
        assert exc.field and exc.message
        return
    builder = ColumnBuilder()
    builder.add(event)                           # what the store writes: must never fail
    assert builder.take().num_rows == 1
    orjson.dumps(event.to_dict())


@given(st.lists(LINE, min_size=1, max_size=6))
def test_ingest_lines_are_events_or_quarantined(tmp_path_factory, lines):
    work = tmp_path_factory.mktemp("fuzz-ingest")
    path = work / "events.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n")
    stats = ReadStats()
    with Quarantine(work / "bad.jsonl") as quarantine:
        events = list(iter_jsonl(path, quarantine=quarantine, stats=stats))
    nonblank = sum(1 for line in path.read_bytes().split(b"\n") if line.strip() and line.strip() != b"\xef\xbb\xbf")
    assert len(events) + stats.bad >= nonblank - 1       # a BOM-only first line may count as blank
    builder = ColumnBuilder()
    for event in events:
        builder.add(event)
    try:
        list(iter_jsonl(path))                            # strict: one BadInputError, nothing else
    except BadInputError as exc:
        assert exc.describe()


@given(st.integers(1, 1100), st.sampled_from(["list", "dict"]))
def test_the_depth_limit_is_exact(depth, kind):
    value = nest(depth, kind=kind)
    assert nesting_exceeds(value) == (depth > MAX_JSON_DEPTH)
