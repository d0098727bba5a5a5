"""JSON Lines reading (plain/gzip, strict/quarantine, limits) and writing."""

from __future__ import annotations

import base64
import gzip

import orjson
import pytest

from distillguard.errors import BadInputError
from distillguard.events.jsonl import JsonlWriter, Quarantine, ReadStats, iter_jsonl
from distillguard.events.schema import event_from_obj, prompt_view, response_text


def read_all(path, **kw):
    return list(iter_jsonl(path, **kw))


def read_quarantine(path):
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


# ---------------------------------------------------------------- reading

@pytest.mark.parametrize("gz", [False, True])
def test_reads_plain_and_gzip(write_jsonl, make_event, gz):
    path = write_jsonl("events.jsonl" + (".gz" if gz else ""), [make_event(i) for i in range(5)], gz=gz)
    stats = ReadStats()
    events = read_all(path, stats=stats)
    assert [e.ts for e in events] == [make_event(i)["ts"] for i in range(5)]
    assert [prompt_view(e.request).prompt_text for e in events] == [f"Question number {i}?" for i in range(5)]
    assert (stats.lines, stats.events, stats.bad) == (5, 5, 0)


def test_gzip_detected_by_magic_not_name(write_jsonl, make_event):
    gz_named_plain = write_jsonl("events.jsonl", [make_event(1)], gz=True)
    assert gz_named_plain.read_bytes()[:2] == b"\x1f\x8b"
    assert [e.account for e in read_all(gz_named_plain)] == ["acct-1"]
    plain_named_gz = write_jsonl("events.jsonl.gz", [make_event(2)], gz=False)
    assert [e.ts for e in read_all(plain_named_gz)] == [make_event(2)["ts"]]


def test_concatenated_gzip_members(tmp_path, make_event):
    path = tmp_path / "multi.jsonl.gz"
    path.write_bytes(gzip.compress(orjson.dumps(make_event(0)) + b"\n")
                     + gzip.compress(orjson.dumps(make_event(1)) + b"\n"))
    assert len(read_all(path)) == 2


def test_blank_lines_ignored(write_jsonl, make_event):
    path = write_jsonl("e.jsonl", ["", make_event(0), "   ", "\t", make_event(1), "", ""])
    stats = ReadStats()
    assert len(read_all(path, stats=stats)) == 2
    assert stats.events == 2 and stats.bad == 0 and stats.lines == 7


def test_crlf_line_endings(tmp_path, make_event):
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b"".join(orjson.dumps(make_event(i)) + b"\r\n" for i in range(3)))
    assert len(read_all(path)) == 3


def test_last_line_without_newline(tmp_path, make_event):
    path = tmp_path / "nonl.jsonl"
    path.write_bytes(orjson.dumps(make_event(0)) + b"\n" + orjson.dumps(make_event(1)))
    assert len(read_all(path)) == 2


@pytest.mark.parametrize("gz", [False, True])
def test_utf8_bom_skipped(write_jsonl, make_event, gz):
    path = write_jsonl("bom.jsonl", [b"\xef\xbb\xbf" + orjson.dumps(make_event(0)), make_event(1)], gz=gz)
    events = read_all(path)
    assert len(events) == 2
    assert events[0].account == "acct-1"


def test_unicode_preserved(write_jsonl, make_event):
    text = "Émoji 🧪🔥 中文字符 العربية עברית \u200f ok"
    rec = make_event(account="账户-🦊", request={"messages": [{"role": "user", "content": text}]},
                     response={"choices": [{"message": {"content": "ответ ✓"}}]})
    path = write_jsonl("u.jsonl", [rec])
    (ev,) = read_all(path)
    assert ev.account == "账户-🦊"
    assert prompt_view(ev.request).prompt_text == text
    assert response_text(ev.response) == "ответ ✓"


def test_escaped_unicode_decoded(tmp_path):
    path = tmp_path / "esc.jsonl"
    path.write_text('{"ts": 1791201600, "account": "a", "request": {"messages": '
                    '[{"role": "user", "content": "\\u4e2d\\ud83e\\uddea"}]}}\n', encoding="ascii")
    (ev,) = read_all(path)
    assert prompt_view(ev.request).prompt_text == "中🧪"


def test_very_long_prompt(write_jsonl, make_event):
    prompt = "lorem ipsum dolor sit amet " * (5 * 1024 * 1024 // 27 + 1)
    assert len(prompt) > 5_000_000
    path = write_jsonl("big.jsonl.gz", [make_event(0), make_event(1, request={"prompt": prompt}), make_event(2)],
                       gz=True)
    events = read_all(path)
    assert len(events) == 3
    assert prompt_view(events[1].request).prompt_text == prompt


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    stats = ReadStats()
    assert read_all(path, stats=stats) == []
    assert (stats.lines, stats.events, stats.bad) == (0, 0, 0)


def test_empty_gzip_file(tmp_path):
    path = tmp_path / "empty.jsonl.gz"
    path.write_bytes(gzip.compress(b""))
    assert read_all(path) == []


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(BadInputError) as info:
        read_all(tmp_path / "nope.jsonl")
    assert info.value.source == str(tmp_path / "nope.jsonl")
    assert "no such file" in str(info.value)
    with pytest.raises(BadInputError) as info:
        read_all(tmp_path)
    assert "directory" in str(info.value)


def test_streams_lazily(write_jsonl, make_event):
    """Events before a bad line are yielded before the error is raised."""
    path = write_jsonl("e.jsonl", [make_event(0), make_event(1), "{oops"])
    it = iter_jsonl(path)
    assert next(it).ts == make_event(0)["ts"]
    assert next(it).ts == make_event(1)["ts"]
    with pytest.raises(BadInputError):
        next(it)


# ---------------------------------------------------------------- strict mode

STRICT_CASES = [
    ('{"ts": 1791201600, "account": "a", ', None, "malformed JSON"),
    ('[1, 2, 3]', "<record>", "JSON object"),
    ('"just a string"', "<record>", "JSON object"),
    (orjson.dumps({"ts": 1791201600, "account": 42, "request": {"messages": []}}), "account", "string"),
    (orjson.dumps({"ts": 1791201600, "account": "a", "request": {"messages": [{"role": "user", "content": 1}]}}),
     "request.messages[0].content", "string"),
    (orjson.dumps({"account": "a", "request": {"messages": []}}), "ts", "missing"),
    (orjson.dumps({"ts": 1791201600, "account": "a"}), "request", "missing"),
    (orjson.dumps({"ts": 1791201600123, "account": "a", "request": {"messages": []}}), "ts", "out of range"),
    (b'{"ts": 1791201600, "account": "\xff\xfe", "request": {"messages": []}}', None, "malformed JSON"),
]


@pytest.mark.parametrize(("bad_line", "field", "words"), STRICT_CASES)
@pytest.mark.parametrize("gz", [False, True])
def test_strict_mode_names_source_line_field(write_jsonl, make_event, bad_line, field, words, gz):
    path = write_jsonl("events.jsonl", [make_event(0), "", make_event(1), bad_line, make_event(2)], gz=gz)
    with pytest.raises(BadInputError) as info:
        read_all(path)
    exc = info.value
    assert exc.source == str(path)
    assert exc.line == 4
    assert exc.field == field
    assert words in exc.message
    text = str(exc)
    assert text.startswith(f"{path}:4")
    if field is not None:
        assert f"field '{field}'" in text


# ---------------------------------------------------------------- quarantine mode

def test_quarantine_collects_bad_lines_and_yields_good(write_jsonl, make_event, tmp_path):
    bad_utf8 = b'{"ts": 1791201600, "account": "\xff", "request": {}}'
    lines = [make_event(0), "{not json", make_event(1), orjson.dumps({"ts": 1, "account": "a", "request": {}}),
             "", bad_utf8, "[]", make_event(2)]
    path = write_jsonl("events.jsonl", lines)
    qpath = tmp_path / "sub" / "quarantine.jsonl"
    stats = ReadStats()
    with Quarantine(qpath) as q:
        events = read_all(path, quarantine=q, stats=stats)
        assert q.count == 4
    assert [e.ts for e in events] == [make_event(i)["ts"] for i in range(3)]
    assert (stats.lines, stats.events, stats.bad) == (8, 3, 4)

    records = read_quarantine(qpath)
    assert [r["line"] for r in records] == [2, 4, 6, 7]
    assert all(r["source"] == str(path) for r in records)
    assert [r["field"] for r in records] == [None, "ts", None, "<record>"]
    assert "malformed JSON" in records[0]["error"]
    assert "out of range" in records[1]["error"]
    assert records[0]["raw"] == "{not json"
    assert orjson.loads(records[1]["raw"]) == {"ts": 1, "account": "a", "request": {}}
    assert "raw" not in records[2]
    assert base64.b64decode(records[2]["raw_base64"]) == bad_utf8
    assert records[3]["raw"] == "[]"


def test_quarantine_file_not_created_without_bad_lines(write_jsonl, make_event, tmp_path):
    path = write_jsonl("events.jsonl", [make_event(0)])
    qpath = tmp_path / "q.jsonl"
    with Quarantine(qpath) as q:
        assert len(read_all(path, quarantine=q)) == 1
    assert q.count == 0
    assert not qpath.exists()


def test_quarantine_raw_strips_crlf(tmp_path, make_event):
    path = tmp_path / "e.jsonl"
    path.write_bytes(b"{bad\r\n" + orjson.dumps(make_event(0)) + b"\r\n")
    qpath = tmp_path / "q.jsonl"
    with Quarantine(qpath) as q:
        assert len(read_all(path, quarantine=q)) == 1
    assert read_quarantine(qpath)[0]["raw"] == "{bad"


# ---------------------------------------------------------------- line limit

def test_max_line_bytes_strict(write_jsonl, make_event):
    long_rec = make_event(1, request={"prompt": "x" * 5000})
    path = write_jsonl("e.jsonl", [make_event(0), long_rec, make_event(2)])
    assert len(read_all(path, max_line_bytes=10_000)) == 3
    with pytest.raises(BadInputError) as info:
        read_all(path, max_line_bytes=2_000)
    assert info.value.line == 2
    assert info.value.field is None
    assert "exceeds" in info.value.message and "2,000" in info.value.message


def test_max_line_bytes_quarantine(write_jsonl, make_event, tmp_path):
    long_rec = make_event(1, request={"prompt": "x" * 5000})
    path = write_jsonl("e.jsonl", [make_event(0), long_rec, make_event(2)])
    qpath = tmp_path / "q.jsonl"
    with Quarantine(qpath) as q:
        events = read_all(path, quarantine=q, max_line_bytes=2_000)
    assert len(events) == 2
    (rec,) = read_quarantine(qpath)
    assert rec["line"] == 2 and "exceeds" in rec["error"]
    assert orjson.loads(rec["raw"]) == long_rec


# ---------------------------------------------------------------- corrupt gzip

def test_truncated_gzip_is_a_clear_error(tmp_path, make_event):
    data = gzip.compress(b"".join(orjson.dumps(make_event(i)) + b"\n" for i in range(200)))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError) as info:
        read_all(path)
    exc = info.value
    assert exc.source == str(path)
    assert "truncated" in exc.message
    assert exc.__cause__ is None and exc.__suppress_context__


def test_truncated_gzip_delivers_whole_lines_then_raises(tmp_path, make_event):
    data = gzip.compress(b"".join(orjson.dumps(make_event(i)) + b"\n" for i in range(200)))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[:-10])
    got = []
    with pytest.raises(BadInputError) as info:
        for ev in iter_jsonl(path):
            got.append(ev)
    assert len(got) >= 150
    assert [e.ts for e in got] == [make_event(i)["ts"] for i in range(len(got))]
    assert info.value.line == len(got) + 1
    assert "truncated" in info.value.message


def test_truncated_gzip_in_quarantine_mode(tmp_path, make_event):
    data = gzip.compress(b"".join(orjson.dumps(make_event(i)) + b"\n" for i in range(200)))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[:-10])
    qpath = tmp_path / "q.jsonl"
    stats = ReadStats()
    with Quarantine(qpath) as q:
        got = read_all(path, quarantine=q, stats=stats)
    assert 150 <= len(got) < 200
    assert [e.ts for e in got] == [make_event(i)["ts"] for i in range(len(got))]
    (rec,) = read_quarantine(qpath)
    assert rec["line"] == len(got) + 1
    assert rec["source"] == str(path)
    assert "truncated" in rec["error"]
    assert stats.bad == 1


@pytest.mark.parametrize("tail", [b"\0" * 512, b"garbage after the gzip member" * 4])
def test_lines_before_corrupt_gzip_tail_are_delivered(tmp_path, make_event, tail):
    """Regression (iter_lines): when the bytes after a complete gzip member are not another member
    (zero padding, which the stdlib gzip module accepts, or trailing garbage) the exception raised
    by the second decompressor discards ``data`` already decoded from the same chunk, so the
    three good lines are never yielded and the error names line 1 instead of line 4."""
    data = gzip.compress(b"".join(orjson.dumps(make_event(i)) + b"\n" for i in range(3)))
    path = tmp_path / "tail.jsonl.gz"
    path.write_bytes(data + tail)
    got = []
    try:
        for ev in iter_jsonl(path):
            got.append(ev)
    except BadInputError as exc:
        assert exc.line == 4
    assert len(got) == 3


def test_garbage_after_gzip_magic(tmp_path):
    path = tmp_path / "fake.jsonl.gz"
    path.write_bytes(b"\x1f\x8b" + b"this is not deflate data at all" * 10)
    with pytest.raises(BadInputError) as info:
        read_all(path)
    assert "gzip" in info.value.message


# ---------------------------------------------------------------- writer

@pytest.mark.parametrize(("name", "compress", "gzipped"), [
    ("out.jsonl", None, False),
    ("out.jsonl.gz", None, True),
    ("out.jsonl", True, True),
    ("out.jsonl.gz", False, False),
])
def test_writer_round_trip(tmp_path, make_event, name, compress, gzipped):
    originals = [event_from_obj(make_event(i, ts=f"2026-10-05T12:00:{i:02d}.250Z", region="eu"))
                 for i in range(5)]
    originals.append(event_from_obj(make_event(9, response="string reply", identity={"org": "o"})))
    path = tmp_path / "nested" / name
    with JsonlWriter(path, compress=compress) as w:
        w.write_many(originals[:3])
        for ev in originals[3:]:
            w.write(ev)
        w.write({"ts": 1791201600, "account": "plain-dict", "request": {"prompt": "p"}})
    assert w.count == 7
    assert (path.read_bytes()[:2] == b"\x1f\x8b") is gzipped
    back = read_all(path)
    assert back[:6] == originals
    assert back[6].account == "plain-dict" and back[6].endpoint == "/v1/completions"


def test_writer_flushes_large_batches(tmp_path, make_event):
    path = tmp_path / "many.jsonl.gz"
    with JsonlWriter(path) as w:
        for i in range(5000):
            w.write(make_event(i))
    events = read_all(path)
    assert len(events) == 5000
    assert len({e.id for e in events}) == 5000
