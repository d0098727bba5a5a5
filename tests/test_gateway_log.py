"""The durable log (group commit, torn tails, segments) and the loader into DuckDB / Parquet sinks."""

from __future__ import annotations

import asyncio
import os
import time

import duckdb
import orjson
import pyarrow.parquet as pq
import pytest

from distillguard.gateway.sinks import DuckDBSink, Loader, NullSink, ParquetSink
from distillguard.gateway.wal import DurableLog, iter_log_records, list_segments, read_complete_lines

BASE = 1791201600.0


def record(i: int, account: str = "acct") -> bytes:
    return orjson.dumps({"id": f"ev-{i}", "ts": BASE + i, "account": account,
                         "request": {"messages": [{"role": "user", "content": f"question {i}"}]},
                         "response": {"choices": [{"message": {"role": "assistant", "content": "ok"}}]},
                         "usage": {"prompt_tokens": 3, "completion_tokens": 1}, "status": 200})


def test_appends_are_durable_when_the_future_completes(tmp_path):
    log = DurableLog(tmp_path)

    async def main():
        await asyncio.gather(*(log.append(record(i)) for i in range(500)))
        # Every awaited record is already in the file, before close.
        return [orjson.loads(line)["id"] for line in iter_log_records(tmp_path)]

    ids = asyncio.run(main())
    assert sorted(ids) == sorted(f"ev-{i}" for i in range(500))
    assert log.stats.commits < 500          # group commit: many records share an fsync
    log.close()


def test_restart_starts_a_new_segment_and_torn_tails_are_skipped(tmp_path):
    log = DurableLog(tmp_path)
    for i in range(3):
        log.append_nowait(record(i))
    assert log.flush()
    log.close()
    first = list_segments(tmp_path)[-1][1]
    with open(first, "ab") as fh:
        fh.write(b'{"id": "torn", "ts": 17')          # a crash mid-write: no newline
    log2 = DurableLog(tmp_path)
    assert log2.current_segment == 2
    log2.append_nowait(record(3))
    log2.flush()
    log2.close()
    assert [orjson.loads(r)["id"] for r in iter_log_records(tmp_path)] == ["ev-0", "ev-1", "ev-2", "ev-3"]
    lines, offset = read_complete_lines(first, 0)
    assert len(lines) == 3 and offset < first.stat().st_size


def test_segments_roll_over_at_the_size_limit(tmp_path):
    log = DurableLog(tmp_path, segment_bytes=2000)
    for i in range(50):
        log.append_nowait(record(i))
        log.flush()
    log.close()
    assert len(list_segments(tmp_path)) > 3
    assert len(list(iter_log_records(tmp_path))) == 50


def test_loader_moves_records_into_duckdb_once(tmp_path):
    log = DurableLog(tmp_path / "log")
    for i in range(100):
        log.append_nowait(record(i))
    log.flush()
    sink = DuckDBSink(tmp_path / "e.duckdb")
    loader = Loader(tmp_path / "log", sink, current_segment=lambda: log.current_segment)
    assert loader.load_once() == 100
    assert loader.load_once() == 0                      # nothing new: nothing re-sent
    for i in range(100, 120):
        log.append_nowait(record(i))
    log.flush()
    assert loader.load_once() == 20
    assert sink.store.count() == 120
    sink.close()
    log.close()


def test_a_lost_checkpoint_replays_without_duplicates(tmp_path):
    log = DurableLog(tmp_path / "log")
    for i in range(40):
        log.append_nowait(record(i))
    log.flush()
    sink = DuckDBSink(tmp_path / "e.duckdb")
    Loader(tmp_path / "log", sink, current_segment=lambda: log.current_segment).load_once()
    (tmp_path / "log" / "checkpoint.json").write_bytes(b"{garbage")       # damaged
    again = Loader(tmp_path / "log", sink, current_segment=lambda: log.current_segment)
    assert again.load_once() == 40 and again.inserted == 0
    assert sink.store.count() == 40
    sink.close()
    log.close()


def test_finished_segments_are_deleted_after_loading_unless_kept(tmp_path):
    for keep in (False, True):
        d = tmp_path / f"keep-{keep}"
        log = DurableLog(d, segment_bytes=1500)
        for i in range(30):
            log.append_nowait(record(i))
            log.flush()
        loader = Loader(d, NullSink(), current_segment=lambda: log.current_segment, keep_segments=keep)
        assert loader.load_once() == 30
        remaining = len(list_segments(d))
        assert remaining == 1 if not keep else remaining > 1
        log.close()


def test_bad_lines_in_the_log_are_quarantined_not_fatal(tmp_path):
    from distillguard.events.jsonl import Quarantine

    log = DurableLog(tmp_path / "log")
    log.append_nowait(record(1))
    log.append_nowait(b'{"ts": "yesterday", "account": "x", "request": {}}')
    log.append_nowait(b"not json at all")
    log.append_nowait(record(2))
    log.flush()
    quarantine = Quarantine(tmp_path / "q.jsonl")
    sink = DuckDBSink(tmp_path / "e.duckdb", quarantine=quarantine)
    Loader(tmp_path / "log", sink, current_segment=lambda: log.current_segment).load_once()
    quarantine.close()
    assert sink.store.count() == 2
    bad = [orjson.loads(line) for line in (tmp_path / "q.jsonl").read_bytes().splitlines()]
    assert [b["field"] for b in bad] == ["ts", None]
    sink.close()
    log.close()


def test_parquet_sink_is_idempotent_per_slice(tmp_path):
    log = DurableLog(tmp_path / "log")
    for i in range(10):
        log.append_nowait(record(i))
    log.flush()
    sink = ParquetSink(tmp_path / "pq", replica="gw-a")
    Loader(tmp_path / "log", sink, current_segment=lambda: log.current_segment).load_once()
    os.remove(tmp_path / "log" / "checkpoint.json")
    Loader(tmp_path / "log", sink, current_segment=lambda: log.current_segment).load_once()
    files = sorted((tmp_path / "pq").rglob("*.parquet"))
    assert len(files) == 1 and files[0].parent.name.startswith("day=") and files[0].name.startswith("gw-a-")
    assert pq.read_table(files[0]).num_rows == 10
    # The tree is a store the rest of the system reads (scan, Spark, DuckDB).
    n = duckdb.execute(f"SELECT count(*) FROM read_parquet('{tmp_path / 'pq'}/**/*.parquet')").fetchone()[0]
    assert n == 10
    log.close()


def test_unwritable_log_directory_is_a_clear_error(tmp_path):
    from distillguard.errors import BadInputError

    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(BadInputError, match="log directory"):
        DurableLog(target / "sub")


@pytest.mark.parametrize("spool", [0, 1 << 20])
def test_on_commit_sees_only_written_records_in_log_order(tmp_path, spool):
    """The evidence tree's hook: tags of records on disk, in log order. A failed write (full disk)
    never reaches it when failing closed; failing open, spooled records reach it when written."""
    from gateway_support import fill_to, small_tmpfs

    seen: list[int] = []
    with small_tmpfs(tmp_path / "log", size="256k") as log_dir:
        log = DurableLog(log_dir, spool_bytes=spool, retry_s=0.05, on_commit=seen.extend)
        try:
            for i in range(5):
                log.append_nowait(record(i), tag=i)
            assert log.flush()
            filler = fill_to(log_dir, 0)
            for i in range(5, 10):
                log.append_nowait(record(i) + b" " * 8000, tag=i)
                assert log.flush()
            filler.unlink()
            time.sleep(0.1)
            log.append_nowait(record(10), tag=10)
            log.append_nowait(record(11))                     # no tag: written, not reported
            assert log.flush()
            deadline = time.monotonic() + 5
            while log.spooled() and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            log.close()
        logged = [int(orjson.loads(line)["id"][3:]) for line in iter_log_records(log_dir)]
    assert seen == [i for i in logged if i != 11]
    assert seen[:5] == [0, 1, 2, 3, 4] and seen[-1] == 10
    if spool:
        assert seen == list(range(11))
    else:
        assert log.stats.failed > 0 and len(seen) < 11
