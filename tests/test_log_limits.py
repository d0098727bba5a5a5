"""The log never holds a record its reader cannot read, and never loses an acknowledged one:
records of every size around the reader's slice, a failed (short) write, SIGKILL mid-rotation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import orjson
import pytest

from distillguard.gateway.sinks import DuckDBSink, Loader
from distillguard.gateway.wal import DurableLog, iter_log_records, list_segments, read_complete_lines

BASE = 1791201600.0


def record(i: int, content: str = "") -> bytes:
    return orjson.dumps({"id": f"ev-{i}", "ts": BASE + i, "account": "acct",
                         "request": {"messages": [{"role": "user", "content": content or f"question {i}"}]},
                         "status": 200})


def stored_ids(db: Path) -> set[str]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {r[0] for r in con.execute("SELECT id FROM events").fetchall()}
    finally:
        con.close()


@pytest.mark.parametrize("slice_bytes", [4096])
def test_a_record_at_every_size_around_the_slice_is_loaded(tmp_path, slice_bytes):
    """Lines shorter than, equal to, one over and many times the loader's slice all reach the store
    (the loader once read fixed slices and never got past a longer line, then deleted its segment)."""
    log = DurableLog(tmp_path / "log", segment_bytes=1 << 30)
    overhead = len(record(0, "x")) - 1 + 1          # the line without its content, plus the newline
    sizes = [1, slice_bytes - overhead - 1, slice_bytes - overhead, slice_bytes - overhead + 1,
             slice_bytes * 3 + 17, 10]
    for i, size in enumerate(sizes):
        log.append_nowait(record(i, "y" * size))
    assert log.flush()
    log.close()
    loader = Loader(tmp_path / "log", DuckDBSink(tmp_path / "events.duckdb"), current_segment=lambda: 1 << 62)
    loader.max_slice_bytes = slice_bytes
    loader.pause_s = 0
    assert loader.load_once() == len(sizes)
    loader.sink.close()
    assert stored_ids(tmp_path / "events.duckdb") == {f"ev-{i}" for i in range(len(sizes))}


def test_read_complete_lines_reads_a_line_longer_than_the_slice(tmp_path):
    path = tmp_path / "segment-00000001.jsonl"
    path.write_bytes(b"a" * 10_000 + b"\nb\n" + b"torn")
    lines, offset = read_complete_lines(path, 0, max_bytes=100)
    assert lines == [b"a" * 10_000] and offset == 10_001
    lines, offset = read_complete_lines(path, offset, max_bytes=100)
    assert lines == [b"b"] and offset == 10_003
    assert read_complete_lines(path, offset, max_bytes=100) == ([], offset)     # the torn tail waits


def test_a_segment_is_deleted_only_after_all_its_lines_are_stored(tmp_path):
    """A finished segment with a long record in the middle: rotated away, loaded, then deleted."""
    log = DurableLog(tmp_path / "log", segment_bytes=1 << 30)
    for i in range(5):
        log.append_nowait(record(i))
    log.append_nowait(record(5, "z" * 50_000))
    for i in range(6, 26):
        log.append_nowait(record(i))
    assert log.flush()
    log.close()
    restarted = DurableLog(tmp_path / "log")            # a restart: the old segment is finished
    loader = Loader(tmp_path / "log", DuckDBSink(tmp_path / "events.duckdb"),
                    current_segment=lambda: restarted.current_segment)
    loader.max_slice_bytes = 8192
    loader.pause_s = 0
    loader.load_once()
    restarted.close()
    loader.sink.close()
    assert stored_ids(tmp_path / "events.duckdb") == {f"ev-{i}" for i in range(26)}
    assert [seq for seq, _ in list_segments(tmp_path / "log")] == [2]      # segment 1 went once loaded
    assert loader.torn == 0


_SHORT_WRITE = textwrap.dedent("""
    import resource, signal, sys
    from distillguard.gateway.wal import DurableLog
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # a write past the limit fails with EFBIG
    log = DurableLog(sys.argv[1], segment_bytes=1 << 30, sync=False)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
    acked = failed = 0
    for i in range(400):
        log.append_nowait(b'{"id": "ev-%d", "pad": "%s"}' % (i, b"p" * (i % 97)))
        log.flush()
        if log.error is None:
            acked += 1
        else:
            failed += 1
    log.close()
    print(acked, failed, log.stats.appended, log.stats.failed)
""")


def test_a_full_file_never_leaves_a_torn_record_between_good_ones(tmp_path):
    """With a file-size limit (a full disk as far as the writer can tell): every acknowledged record
    reads back whole, no failed record is half there, and nothing merges with a later line."""
    out = subprocess.run([sys.executable, "-c", _SHORT_WRITE, str(tmp_path / "log"), "6000"],
                         capture_output=True, text=True, timeout=60, env=os.environ | {"PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    assert out.returncode == 0, out.stderr[-2000:]
    acked, failed, appended, nfailed = map(int, out.stdout.split())
    assert acked > 10 and failed > 0 and appended == acked and nfailed == failed
    records = [orjson.loads(r) for r in iter_log_records(tmp_path / "log")]   # each line parses whole
    assert len(records) == acked
    segment = list_segments(tmp_path / "log")[0][1]
    assert segment.read_bytes().endswith(b"\n")                            # no torn partial record


_KILL_MID_ROTATION = textwrap.dedent("""
    import sys, time
    from distillguard.gateway.wal import DurableLog
    log = DurableLog(sys.argv[1], segment_bytes=250)
    i = 0
    while True:
        log.append_nowait(b'{"id": "ev-%d", "ts": 1791201600, "account": "a", "request": {"messages": []}}' % i)
        log.flush()
        print(i, flush=True)      # acknowledged: on disk
        i += 1
""")


@pytest.mark.parametrize("kill_after", [7, 23, 61])
def test_sigkill_during_rotation_loses_no_acknowledged_record(tmp_path, kill_after):
    """Segments roll every few records; the writer is SIGKILLed at varied points (mid-write, mid-
    rotation); every acknowledged record is then read back and loaded, with no duplicates."""
    proc = subprocess.Popen([sys.executable, "-c", _KILL_MID_ROTATION, str(tmp_path / "log")],
                            stdout=subprocess.PIPE, text=True)
    acked = []
    deadline = time.monotonic() + 30
    while len(acked) < kill_after and time.monotonic() < deadline:
        acked.append(int(proc.stdout.readline()))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert len(acked) == kill_after
    assert len(list_segments(tmp_path / "log")) > 1
    restarted = DurableLog(tmp_path / "log")
    loader = Loader(tmp_path / "log", DuckDBSink(tmp_path / "events.duckdb"),
                    current_segment=lambda: restarted.current_segment)
    loader.pause_s = 0
    loader.load_once()
    restarted.close()
    loader.sink.close()
    stored = stored_ids(tmp_path / "events.duckdb")
    assert {f"ev-{i}" for i in acked} <= stored
    assert len(list_segments(tmp_path / "log")) == 1     # finished segments deleted once loaded


def test_log_files_are_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        log = DurableLog(tmp_path / "log")
        log.append_nowait(record(1))
        log.flush()
        log.close()
        loader = Loader(tmp_path / "log", DuckDBSink(tmp_path / "events.duckdb"))
        loader.load_once()
        loader.sink.close()
    finally:
        os.umask(old)
    assert (tmp_path / "log").stat().st_mode & 0o777 == 0o700
    for path in [*(tmp_path / "log").iterdir(), tmp_path / "events.duckdb"]:
        assert path.stat().st_mode & 0o777 == 0o600, path
