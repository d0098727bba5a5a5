"""The real command line, run in a subprocess: exit codes, one-line errors, never a traceback.

Each CLI start costs most of a second (duckdb, pyarrow, pandas imports), so the good store is
ingested once per module and shared by the read-only checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import orjson
import pyarrow.parquet as pq
import pytest

from conftest import _make_event
from distillguard.events.schema import event_from_obj
from distillguard.store import EventStore

N_GOOD = 31


def cli(*args, cwd):
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "distillguard", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def assert_one_line_error(proc):
    assert proc.returncode == 2, (proc.stdout, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def stored(db):
    with EventStore(db, read_only=True) as store:
        return store.count()


def good_records():
    # 30 chat events an hour apart from 2026-10-05T12:00Z, plus one completions event of another account
    return ([_make_event(i * 3600) for i in range(30)]
            + [_make_event(7, account="acct-2", request={"prompt": "p"})])


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """(workdir, good_file, db, CompletedProcess of the first ingest)."""
    work = tmp_path_factory.mktemp("cli")
    good = work / "good.jsonl"
    good.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in good_records()))
    db = work / "store.duckdb"
    proc = cli("ingest", good.name, "--db", db.name, cwd=work)
    return work, good, db, proc


# ---------------------------------------------------------------- ingest

def test_ingest_good_file(ingested):
    work, good, db, proc = ingested
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"store holds {N_GOOD} events" in proc.stdout
    assert stored(db) == N_GOOD
    assert not (work / "store.duckdb.quarantine.jsonl").exists()


def test_ingest_same_file_again_adds_nothing(ingested):
    work, good, db, _ = ingested
    proc = cli("ingest", good, "--db", db, cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert f"store holds {N_GOOD} events" in proc.stdout
    assert stored(db) == N_GOOD


def test_ingest_malformed_strict(tmp_path, write_jsonl, make_event):
    bad = write_jsonl("bad.jsonl", [make_event(0), make_event(1),
                                    '{"ts": "2026-10-05T12:00:00Z", "account": ["x"], "request": {}}',
                                    make_event(3)])
    db = tmp_path / "s.duckdb"
    proc = cli("ingest", bad, "--db", db, cwd=tmp_path)
    line = assert_one_line_error(proc)
    assert f"{bad}:3" in line
    assert "field 'account'" in line
    assert "--skip-bad" in line
    assert stored(db) == 0   # nothing from the file, not even the two good lines before the bad one


def test_ingest_malformed_json_in_gzip_strict(tmp_path, write_jsonl, make_event):
    bad = write_jsonl("bad.jsonl.gz", [make_event(0), '{"ts": 1791201600, "acc'], gz=True)
    proc = cli("ingest", bad, "--db", tmp_path / "s.duckdb", cwd=tmp_path)
    line = assert_one_line_error(proc)
    assert f"{bad}:2" in line and "malformed JSON" in line


def test_ingest_skip_bad(tmp_path, write_jsonl, make_event):
    bad = write_jsonl("bad.jsonl", [make_event(0), "{nope", make_event(1),
                                    '{"ts": 1791201600, "account": "a", "request": {"messages": "x"}}',
                                    make_event(2)])
    db = tmp_path / "s.duckdb"
    proc = cli("ingest", bad, "--db", db, "--skip-bad", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "store holds 3 events" in proc.stdout
    assert "2 bad line(s) quarantined" in proc.stdout
    qpath = tmp_path / "s.duckdb.quarantine.jsonl"
    records = [orjson.loads(line) for line in qpath.read_bytes().splitlines()]
    assert [(r["source"], r["line"], r["field"]) for r in records] == [
        (str(bad), 2, None), (str(bad), 4, "request.messages")]
    assert records[0]["raw"] == "{nope"
    assert "malformed JSON" in records[0]["error"]
    assert stored(db) == 3


def test_ingest_missing_file(tmp_path, ingested):
    _, good, _, _ = ingested
    missing = tmp_path / "missing.jsonl"
    proc = cli("ingest", good, missing, "--db", tmp_path / "s.duckdb", cwd=tmp_path)
    line = assert_one_line_error(proc)
    assert str(missing) in line and "no such file" in line


def test_ingest_into_non_duckdb_file(tmp_path, ingested):
    _, good, _, _ = ingested
    not_db = tmp_path / "copy.jsonl"
    not_db.write_bytes(good.read_bytes())
    line = assert_one_line_error(cli("ingest", good, "--db", not_db, cwd=tmp_path))
    assert "DuckDB" in line and str(not_db) in line
    assert not_db.read_bytes() == good.read_bytes()


def test_ingest_with_parquet_export(tmp_path, ingested):
    _, good, _, _ = ingested
    out = tmp_path / "pq"
    proc = cli("ingest", good, "--db", tmp_path / "s.duckdb", "--parquet", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    files = sorted(out.rglob("*.parquet"))
    assert files and "exported" in proc.stdout
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in files) == N_GOOD


# ---------------------------------------------------------------- export and stats

def test_export(tmp_path, ingested):
    work, _, db, _ = ingested
    out = tmp_path / "export"
    proc = cli("export", "--db", db, "--out", out, cwd=work)
    assert proc.returncode == 0, proc.stderr
    files = sorted(out.rglob("*.parquet"))
    rows = {}
    for f in files:
        rows[f.parent.name] = rows.get(f.parent.name, 0) + pq.ParquetFile(f).metadata.num_rows
    assert rows == {"day=2026-10-05": 13, "day=2026-10-06": 18}
    assert f"{len(files)} Parquet file(s)" in proc.stdout


def test_export_missing_db(tmp_path):
    proc = cli("export", "--db", tmp_path / "nope.duckdb", "--out", tmp_path / "o", cwd=tmp_path)
    line = assert_one_line_error(proc)
    assert "nope.duckdb" in line


def _check_stats(summary):
    assert summary["events"] == N_GOOD
    assert summary["accounts"] == 2
    assert summary["first"] == "2026-10-05T12:00:00Z"
    assert summary["last"] == "2026-10-06T17:00:00Z"
    assert summary["prompt_tokens"] == N_GOOD * 12
    assert summary["completion_tokens"] == N_GOOD * 3
    assert summary["endpoints"] == {"/v1/chat/completions": 30, "/v1/completions": 1}


def test_stats_json_on_jsonl(ingested):
    work, good, _, _ = ingested
    proc = cli("stats", good, "--format", "json", cwd=work)
    assert proc.returncode == 0, proc.stderr
    _check_stats(json.loads(proc.stdout))


def test_stats_json_on_duckdb(ingested):
    work, _, db, _ = ingested
    proc = cli("stats", db, "--format", "json", cwd=work)
    assert proc.returncode == 0, proc.stderr
    _check_stats(json.loads(proc.stdout))


def test_stats_bad_format(ingested):
    work, good, _, _ = ingested
    line = assert_one_line_error(cli("stats", good, "--format", "xml", cwd=work))
    assert "--format" in line


def test_stats_bad_input(tmp_path, write_jsonl, make_event):
    bad = write_jsonl("bad.jsonl", [make_event(0), "{oops"])
    line = assert_one_line_error(cli("stats", bad, cwd=tmp_path))
    assert f"{bad}:2" in line


# ---------------------------------------------------------------- lab traffic

@pytest.mark.parametrize(("args", "words"), [
    (["--campaigns", "sweep,bogus"], "--campaigns: unknown strategy or family 'bogus'"),
    (["--start", "notadate"], "notadate"),
])
def test_lab_traffic_bad_options(tmp_path, args, words):
    out = tmp_path / "lab"
    proc = cli("lab", "traffic", "--out", out, *args, cwd=tmp_path)
    line = assert_one_line_error(proc)
    assert words in line
    assert not (out / "events.jsonl.gz").exists()


def test_lab_traffic_option_out_of_range(tmp_path):
    proc = cli("lab", "traffic", "--out", tmp_path / "lab", "--days", "0", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "--days" in proc.stderr


# ---------------------------------------------------------------- src bugs

def test_error_text_with_rich_markup(tmp_path, write_jsonl, make_event):
    """Regression (cli.main): the error is printed with rich markup enabled, so user data inside the
    message is parsed as markup: a ts value like "[/x]" raises rich.errors.MarkupError (traceback,
    exit 1), and "[bold]" would be silently swallowed. Escape the message
    (rich.markup.escape) or print it with markup=False."""
    bad = write_jsonl("bad.jsonl", [make_event(0, ts="[/x] [bold]")])
    proc = cli("ingest", bad, "--db", tmp_path / "s.duckdb", cwd=tmp_path)
    line = assert_one_line_error(proc)
    assert "[/x] [bold]" in line and f"{bad}:1" in line


def test_out_of_range_status(tmp_path, write_jsonl, make_event):
    """Regression: event_from_obj accepts any int for ``status`` but the column is int32, so
    ColumnBuilder.take() raises pyarrow.lib.ArrowInvalid and the CLI prints a traceback (exit 1).
    (Same for usage.*_tokens / max_tokens >= 2**63; see test_store.py.)"""
    bad = write_jsonl("bad.jsonl", [make_event(0), make_event(1, status=2**31)])
    proc = cli("ingest", bad, "--db", tmp_path / "s.duckdb", cwd=tmp_path)
    line = assert_one_line_error(proc)
    assert f"{bad}:2" in line and "status" in line


def test_ingest_from_duckdb_store(tmp_path, ingested):
    """Regression: `ingest` accepts a DuckDB store as a source (help text, source_kind), but
    EventStore.iter_tables uses DuckDBPyConnection.fetch_record_batch, absent in duckdb 2.0:
    AttributeError traceback, exit 1."""
    work, good, src, _ = ingested
    dst = tmp_path / "dst.duckdb"
    proc = cli("ingest", src, "--db", dst, cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert stored(dst) == N_GOOD
    with EventStore(dst, read_only=True) as store:
        ids = {r[0] for r in store.run("SELECT id FROM events")}
    assert ids == {event_from_obj(r).id for r in good_records()}


@pytest.mark.parametrize("depth", [70, 300, 1000])
def test_ingest_over_deep_lines_are_bad_input_not_a_traceback(tmp_path, write_jsonl, make_event, depth):
    """A line nested 255-1,024 deep once parsed, then failed to serialise: traceback, nothing stored."""
    deep = make_event(1, request={"messages": [{"role": "user", "content": "x"}], "metadata": "DEEP"})
    # orjson itself cannot write it (that is the point): splice the nesting in as text
    line_of = orjson.dumps(deep).replace(b'"DEEP"', b'{"a":' * depth + b"1" + b"}" * depth)
    path = write_jsonl("deep.jsonl", [make_event(0), line_of, make_event(2)])
    strict = cli("ingest", path, "--db", tmp_path / "strict.duckdb", cwd=tmp_path)
    line = assert_one_line_error(strict)
    assert "deep.jsonl:2" in line and "nested deeper than" in line
    skip = cli("ingest", path, "--db", tmp_path / "skip.duckdb", "--skip-bad", cwd=tmp_path)
    assert skip.returncode == 0 and "Traceback" not in skip.stderr, skip.stderr[-2000:]
    assert stored(tmp_path / "skip.duckdb") == 2
    assert (tmp_path / "skip.duckdb.quarantine.jsonl").read_text().count("\n") == 1
