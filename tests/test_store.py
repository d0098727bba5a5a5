"""The DuckDB event store: idempotent ingest, columns, export, source detection, transactions."""

from __future__ import annotations

import functools
from datetime import datetime

import orjson
import pyarrow.parquet as pq
import pytest

import distillguard.store.ingest as ingest_module

import distillguard.store.ingest as ingest_mod
from distillguard.errors import BadInputError
from distillguard.events.columns import EVENT_SCHEMA, batches_to_tables, events_from_table
from distillguard.events.jsonl import Quarantine
from distillguard.events.parquet import write_parquet
from distillguard.events.schema import event_from_obj
from distillguard.store import EventStore, SourceKind, source_kind
from distillguard.store import sources as sources_mod
from distillguard.store.ingest import ingest_paths


def stored_count(db) -> int:
    with EventStore(db, read_only=True) as store:
        return store.count()


@pytest.fixture
def db(tmp_path):
    return tmp_path / "events.duckdb"


@pytest.fixture
def small_batches(monkeypatch):
    """Make ingest_paths read in batches of 2 rows so a file spans several inserts."""
    monkeypatch.setattr(ingest_mod, "iter_event_tables",
                        functools.partial(sources_mod.iter_event_tables, batch_size=2))


# ---------------------------------------------------------------- idempotent ingest

def test_ingest_same_file_twice_adds_nothing(db, write_jsonl, make_event):
    path = write_jsonl("e.jsonl", [make_event(i) for i in range(10)])
    with EventStore(db) as store:
        first = ingest_paths(store, [path])
    assert (first.read, first.inserted, first.bad) == (10, 10, 0)
    assert first.files[0].kind == "jsonl" and first.files[0].duplicates == 0
    with EventStore(db) as store:
        second = ingest_paths(store, [path])
    assert (second.read, second.inserted) == (10, 0)
    assert second.files[0].duplicates == 10
    assert stored_count(db) == 10


def test_same_file_twice_in_one_call(db, write_jsonl, make_event, small_batches):
    path = write_jsonl("e.jsonl", [make_event(i) for i in range(5)])
    with EventStore(db) as store:
        report = ingest_paths(store, [path, path])
    assert [f.inserted for f in report.files] == [5, 0]
    assert stored_count(db) == 5


def test_gzip_and_plain_copies_are_the_same_events(db, write_jsonl, make_event):
    plain = write_jsonl("e.jsonl", [make_event(i) for i in range(4)])
    gz = write_jsonl("e.jsonl.gz", [make_event(i) for i in range(6)], gz=True)
    with EventStore(db) as store:
        report = ingest_paths(store, [plain, gz])
    assert [f.inserted for f in report.files] == [4, 2]
    assert stored_count(db) == 6


@pytest.mark.parametrize("batched", [False, True])
def test_duplicate_ids_inside_one_file_stored_once(db, write_jsonl, make_event, request, batched):
    if batched:
        request.getfixturevalue("small_batches")
    lines = [make_event(0), make_event(1), make_event(0),                  # same content -> same derived id
             make_event(2, id="fixed"), make_event(3, id="fixed"),         # same explicit id, other content
             make_event(4), make_event(1)]
    path = write_jsonl("dups.jsonl", lines)
    with EventStore(db) as store:
        report = ingest_paths(store, [path])
    assert report.read == 7
    assert report.inserted == 4
    assert report.files[0].duplicates == 3
    with EventStore(db, read_only=True) as store:
        assert store.count() == 4
    with EventStore(db, read_only=True) as store:
        assert store.run("SELECT count(DISTINCT id) FROM events") == [(4,)]


def test_ingest_result_counts(make_event):
    events = [event_from_obj(make_event(i % 3)) for i in range(9)]
    with EventStore(":memory:") as store:
        result = store.ingest(batches_to_tables(events, 2))
        assert (result.read, result.inserted, result.duplicates) == (9, 3, 6)
        assert store.run("SELECT count(*) FROM events") == [(3,)]


# ---------------------------------------------------------------- columns

def test_columns_named_after_record_fields(db):
    with EventStore(db) as store:
        cols = [row[0] for row in store.run("SELECT column_name FROM information_schema.columns "
                                            "WHERE table_name = 'events' ORDER BY ordinal_position")]
    assert cols == EVENT_SCHEMA.names
    for name in ("id", "ts", "account", "key", "endpoint", "model", "ip", "user_agent", "status",
                 "request", "response", "identity", "usage", "extra"):
        assert name in cols


def test_stored_values_and_derived_columns(db, write_jsonl, make_event):
    records = [
        make_event(0, id="chat", ts="2026-10-05T14:00:00.250+02:00", region="eu",
                   identity={"email": "e@example.com"},
                   request={"messages": [{"role": "system", "content": "sys"},
                                         {"role": "user", "content": "u1"},
                                         {"role": "assistant", "content": "a1"},
                                         {"role": "user", "content": [{"type": "text", "text": "u2"}]}],
                            "max_completion_tokens": 1000, "logprobs": True, "top_logprobs": 5,
                            "tools": [{"type": "function", "function": {"name": "f"}}]}),
        make_event(1, id="completion", request={"prompt": "complete me", "logprobs": 3},
                   response={"choices": [{"text": "done"}]}, drop=["usage", "status"]),
        make_event(2, id="str", response="plain", request={"messages": [{"role": "user", "content": "hi"}]}),
    ]
    path = write_jsonl("e.jsonl", records)
    with EventStore(db) as store:
        ingest_paths(store, [path])
    with EventStore(db, read_only=True) as store:
        rows = store.run("SELECT id, ts, account, endpoint, status, prompt_tokens, completion_tokens, prompt_text, "
                         "system_prompt, n_turns, n_messages, max_tokens, logprobs, has_tools, request, response, "
                         "identity, usage, extra FROM events ORDER BY id")
    by_id = {r[0]: r for r in rows}
    chat = by_id["chat"]
    assert chat[1] == datetime(2026, 10, 5, 12, 0, 0, 250000)   # stored as naive UTC
    assert chat[2:7] == ("acct-1", "/v1/chat/completions", 200, 12, 3)
    assert chat[7:14] == ("u2", "sys", 2, 4, 1000, True, True)
    assert orjson.loads(chat[14]) == records[0]["request"]
    assert orjson.loads(chat[15]) == records[0]["response"]
    assert orjson.loads(chat[16]) == {"email": "e@example.com"}
    assert orjson.loads(chat[17]) == records[0]["usage"]
    assert orjson.loads(chat[18]) == {"region": "eu"}

    comp = by_id["completion"]
    assert comp[3] == "/v1/completions"
    assert comp[4:7] == (None, None, None)
    assert comp[7:14] == ("complete me", None, 1, 0, None,
                          True, False)
    assert orjson.loads(comp[15]) == {"choices": [{"text": "done"}]}
    assert comp[17] is None and comp[18] is None

    s = by_id["str"]
    assert orjson.loads(s[15]) == "plain"
    assert s[7:14] == ("hi", None, 1, 1, None, False, False)


# ---------------------------------------------------------------- export

def test_export_parquet_partitions_by_utc_day(db, tmp_path, write_jsonl, make_event):
    records = ([make_event(i, ts=f"2026-10-05T{i:02d}:00:00Z") for i in range(3)]
               + [make_event(10, ts="2026-10-05T23:30:00-02:00")]          # 2026-10-06T01:30Z
               + [make_event(20 + i, ts=f"2026-10-07T1{i}:00:00Z") for i in range(4)])
    path = write_jsonl("e.jsonl", records)
    with EventStore(db) as store:
        ingest_paths(store, [path])
        files = store.export_parquet(tmp_path / "out")
    days = sorted({f.parent.name for f in files})
    assert days == ["day=2026-10-05", "day=2026-10-06", "day=2026-10-07"]
    counts = {}
    for f in files:
        counts[f.parent.name] = counts.get(f.parent.name, 0) + pq.ParquetFile(f).metadata.num_rows
    assert counts == {"day=2026-10-05": 3, "day=2026-10-06": 1, "day=2026-10-07": 4}
    assert sum(counts.values()) == len(records)
    # the exported files are event Parquet files again
    back = []
    for f in files:
        back.extend(events_from_table(pq.read_table(f, columns=EVENT_SCHEMA.names).cast(EVENT_SCHEMA)))
    assert sorted(e.id for e in back) == sorted(event_from_obj(r).id for r in records)


def test_exported_partitions_reingest_without_duplicates(db, tmp_path, write_jsonl, make_event):
    path = write_jsonl("e.jsonl", [make_event(i * 40000) for i in range(6)])   # spans 3 days
    with EventStore(db) as store:
        ingest_paths(store, [path])
        files = store.export_parquet(tmp_path / "out")
    assert len({f.parent.name for f in files}) == 3
    assert all(source_kind(f) is SourceKind.PARQUET for f in files)
    other = tmp_path / "other.duckdb"
    with EventStore(other) as store:
        assert ingest_paths(store, files).inserted == 6
    with EventStore(other) as store:
        assert ingest_paths(store, files + [path]).inserted == 0


def test_parquet_source_ingest(db, tmp_path, make_event):
    events = [event_from_obj(make_event(i, region="eu")) for i in range(5)]
    pq_path = tmp_path / "e.parquet"
    write_parquet(events, pq_path)
    with EventStore(db) as store:
        report = ingest_paths(store, [pq_path])
    assert report.files[0].kind == "parquet" and report.inserted == 5
    with EventStore(db, read_only=True) as store:
        rows = store.run("SELECT extra FROM events")
    assert {orjson.loads(r[0])["region"] for r in rows} == {"eu"}


# ---------------------------------------------------------------- reading the store back

def test_iter_tables_round_trip(db, write_jsonl, make_event):
    """Regression: EventStore.iter_tables calls ``self.con.execute(sql).fetch_record_batch(n)``; with
    the installed duckdb 2.0.0 (pyproject allows duckdb>=1.1) DuckDBPyConnection has no
    ``fetch_record_batch`` (it has ``to_arrow_reader``), so reading a store back raises
    AttributeError -- which also breaks ingesting a DuckDB store as a source."""
    records = [make_event(i, region="eu") for i in range(7)] + [make_event(7, response="string reply")]
    path = write_jsonl("e.jsonl", records)
    with EventStore(db) as store:
        ingest_paths(store, [path])
    with EventStore(db, read_only=True) as store:
        tables = list(store.iter_tables(batch_size=3))
    assert [t.num_rows for t in tables] == [3, 3, 2]
    assert all(t.schema == EVENT_SCHEMA for t in tables)
    back = [ev for t in tables for ev in events_from_table(t)]
    assert back == [event_from_obj(r) for r in records]


@pytest.mark.parametrize("query", ["count", "summary"])
def test_count_then_ingest_on_same_store(make_event, query):
    """Regression: EventStore.count() / summary() / _has_events_table() use ``execute(...).fetchone()``,
    which leaves an unfinished result on the connection under duckdb 2.0; a following
    ``store.ingest()`` / ``insert_table()`` then fails in ``con.register`` with
    duckdb.ResourceInUseException ("connection has an unfinished result from execute()").
    (ingest_paths hides it only because its BEGIN TRANSACTION goes through execute first.)
    Using self.run() (fetchall) in those three methods fixes it."""
    first = [event_from_obj(make_event(i)) for i in range(3)]
    more = [event_from_obj(make_event(i)) for i in range(3, 5)]
    with EventStore(":memory:") as store:
        store.ingest(batches_to_tables(first))
        getattr(store, query)()
        result = store.ingest(batches_to_tables(more))
        assert result.inserted == 2
        assert store.count() == 5


@pytest.mark.parametrize("override", [
    {"status": 2**31},
    {"usage": {"prompt_tokens": 2**63}},
    {"request": {"messages": [{"role": "user", "content": "q"}], "max_tokens": 2**63}},
])
def test_out_of_range_integers_are_bad_input(db, write_jsonl, make_event, override):
    """Regression: event_from_obj accepts any int for status / usage.*_tokens / request.max_tokens,
    but the columns are int32 (status) and int64; ColumnBuilder.take() then raises
    pyarrow.lib.ArrowInvalid ("Value ... too large to fit in C integer type") instead of a
    BadInputError naming the line and field, so the CLI shows a traceback."""
    path = write_jsonl("e.jsonl", [make_event(0), make_event(1, **override)])
    with EventStore(db) as store:
        with pytest.raises(BadInputError) as info:
            ingest_paths(store, [path])
    assert info.value.line == 2


# ---------------------------------------------------------------- opening files

def test_non_duckdb_file_refused(tmp_path, write_jsonl, make_event):
    path = write_jsonl("events.duckdb", [make_event(0)])
    for read_only in (False, True):
        with pytest.raises(BadInputError) as info:
            EventStore(path, read_only=read_only)
        assert info.value.source == str(path)
        assert "DuckDB" in info.value.message
    assert path.read_bytes().startswith(b"{")   # left untouched


def test_missing_file_read_only(tmp_path):
    path = tmp_path / "missing.duckdb"
    with pytest.raises(BadInputError) as info:
        EventStore(path, read_only=True)
    assert info.value.source == str(path)
    assert not path.exists()


def test_duckdb_file_without_events_table(tmp_path):
    import duckdb

    path = tmp_path / "other.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t (x INTEGER)")
    con.close()
    with pytest.raises(BadInputError) as info:
        EventStore(path, read_only=True)
    assert "events" in info.value.message


def test_new_store_created_and_summary(db, write_jsonl, make_event):
    assert not db.exists()
    path = write_jsonl("e.jsonl", [make_event(0), make_event(5, account="acct-2"), make_event(10)])
    with EventStore(db) as store:
        ingest_paths(store, [path])
    assert db.exists()
    with EventStore(db, read_only=True) as store:
        summary = store.summary()
    assert summary == {"events": 3, "accounts": 2, "first": "2026-10-05T12:00:00Z",
                       "last": "2026-10-05T12:00:10Z", "prompt_tokens": 36, "completion_tokens": 9}


# ---------------------------------------------------------------- source detection

def test_source_kind_by_content_not_name(tmp_path, write_jsonl, make_event):
    duck = tmp_path / "store.jsonl"
    EventStore(duck).close()
    pq_path = tmp_path / "data.txt"
    write_parquet([event_from_obj(make_event(0))], pq_path)
    jl = write_jsonl("events.parquet", [make_event(0)])
    gz = write_jsonl("events.duckdb", [make_event(0)], gz=True)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert source_kind(duck) is SourceKind.DUCKDB
    assert source_kind(pq_path) is SourceKind.PARQUET
    assert source_kind(jl) is SourceKind.JSONL
    assert source_kind(gz) is SourceKind.JSONL
    assert source_kind(empty) is SourceKind.JSONL


def test_source_kind_missing_and_directory(tmp_path):
    with pytest.raises(BadInputError) as info:
        source_kind(tmp_path / "nope")
    assert "no such file" in info.value.message
    with pytest.raises(BadInputError) as info:
        source_kind(tmp_path)
    assert "directory" in info.value.message


def test_all_paths_checked_before_writing(db, tmp_path, write_jsonl, make_event):
    good = write_jsonl("good.jsonl", [make_event(0)])
    with EventStore(db) as store:
        with pytest.raises(BadInputError):
            ingest_paths(store, [good, tmp_path / "missing.jsonl"])
    assert stored_count(db) == 0


# ---------------------------------------------------------------- atomic ingest (undo by id)

def test_strict_failure_mid_file_rolls_back_that_file(db, write_jsonl, make_event, small_batches, monkeypatch):
    first = write_jsonl("first.jsonl", [make_event(100 + i) for i in range(3)])
    lines = [make_event(i) for i in range(7)] + ['{"ts": 1791201600, "account": 5, "request": {}}'] + [make_event(50)]
    bad = write_jsonl("bad.jsonl", lines)
    delivered = []
    original = ingest_module.iter_event_tables

    def spy(*args, **kwargs):
        for table in original(*args, **kwargs):
            delivered.append(table.num_rows)
            yield table

    monkeypatch.setattr(ingest_module, "iter_event_tables", spy)
    with EventStore(db) as store:
        with pytest.raises(BadInputError) as info:
            ingest_paths(store, [first, bad])
    assert info.value.source == str(bad) and info.value.line == 8 and info.value.field == "account"
    # batches of the bad file did reach DuckDB before the failure, so this is a real rollback test
    assert sum(delivered) > 3 + 3
    with EventStore(db, read_only=True) as store:
        ids = {r[0] for r in store.run("SELECT id FROM events")}
    assert ids == {event_from_obj(make_event(100 + i)).id for i in range(3)}
    # the store is still usable and the fixed file loads fully afterwards
    fixed = write_jsonl("bad.jsonl", [make_event(i) for i in range(7)] + [make_event(50)])
    monkeypatch.setattr(ingest_module, "iter_event_tables", original)
    with EventStore(db) as store:
        assert ingest_paths(store, [fixed]).inserted == 8
    assert stored_count(db) == 11


def test_quarantine_mode_commits_good_rows(db, tmp_path, write_jsonl, make_event, small_batches):
    path = write_jsonl("e.jsonl", [make_event(0), "{bad", make_event(1), "[]", make_event(2)])
    qpath = tmp_path / "q.jsonl"
    with EventStore(db) as store, Quarantine(qpath) as q:
        report = ingest_paths(store, [path], quarantine=q)
    assert (report.read, report.inserted, report.bad) == (3, 3, 2)
    assert [orjson.loads(l)["line"] for l in qpath.read_bytes().splitlines()] == [2, 4]
    assert stored_count(db) == 3


def test_on_file_callback(db, write_jsonl, make_event):
    a = write_jsonl("a.jsonl", [make_event(0), make_event(1)])
    b = write_jsonl("b.jsonl", [make_event(1), make_event(2), make_event(3)])
    seen = []
    with EventStore(db) as store:
        ingest_paths(store, [a, b], on_file=seen.append)
    assert [(f.path, f.read, f.inserted, f.duplicates) for f in seen] == [(str(a), 2, 2, 0), (str(b), 3, 2, 1)]
