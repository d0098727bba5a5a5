"""Where the durable log's records go next: pluggable sinks, and the loader that feeds them.

A sink takes batches of raw JSON lines and stores them; it must be idempotent on event id,
because after a crash the loader re-sends everything after its last checkpoint:

* :class:`DuckDBSink`: the local store (anti-join on id, see ``EventStore.ingest``).
* :class:`ParquetSink`: one Parquet file per loaded slice, named by log position, under
  ``day=YYYY-MM-DD/``: a directory on shared storage is how many gateway replicas feed one store
  (each replica gets its own ``replica`` prefix; Spark and ``scan`` read the tree).
* :class:`NullSink`: keep only the log (another process ships the segments).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Protocol

import orjson
import pyarrow.parquet as pq

from distillguard.errors import FieldError
from distillguard.events.columns import ColumnBuilder
from distillguard.events.jsonl import Quarantine
from distillguard.events.schema import event_from_obj, shallow_text
from distillguard.gateway.wal import has_complete_line, list_segments, read_complete_lines
from distillguard.private import write_private
from distillguard.store import EventStore


class Sink(Protocol):
    name: str

    def write(self, records: list[bytes], origin: str) -> int:
        """Store the records (JSON lines); return how many were new. ``origin`` names the slice."""

    def close(self) -> None: ...


def _tables(records: list[bytes], origin: str, quarantine: Quarantine | None):
    builder = ColumnBuilder()
    for i, raw in enumerate(records):
        try:
            builder.add(event_from_obj(orjson.loads(raw), shallow=shallow_text(raw)))
        except (orjson.JSONDecodeError, FieldError) as exc:
            if quarantine is not None:
                quarantine.add(origin, i + 1, getattr(exc, "field", None), str(exc), raw)
    return builder.take() if len(builder) else None


class DuckDBSink:
    name = "duckdb"

    def __init__(self, db: str | Path, quarantine: Quarantine | None = None) -> None:
        self.store = EventStore(db)
        self.quarantine = quarantine
        self.lock = threading.Lock()   # the admin API shares the connection (API keys table)

    def write(self, records: list[bytes], origin: str) -> int:
        table = _tables(records, origin, self.quarantine)
        if table is None:
            return 0
        # A replayed event has the ts it had the first time: only rows at or after this batch's
        # earliest ts can be its duplicates.
        since = table.column("ts").cast("int64").to_numpy().min() / 1e6
        with self.lock:
            return self.store.ingest([table], since=float(since)).inserted

    def close(self) -> None:
        with self.lock:
            self.store.close()


class ParquetSink:
    name = "parquet"

    def __init__(self, directory: str | Path, replica: str = "gw", quarantine: Quarantine | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.replica = replica
        self.quarantine = quarantine

    def write(self, records: list[bytes], origin: str) -> int:
        table = _tables(records, origin, self.quarantine)
        if table is None:
            return 0
        day = time.strftime("%Y-%m-%d", time.gmtime(table.column("ts")[0].value / 1e6))
        target = self.dir / f"day={day}" / f"{self.replica}-{origin}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, target)   # same name for the same slice: a replay overwrites, never doubles
        return table.num_rows

    def close(self) -> None:
        pass


class NullSink:
    name = "none"

    def write(self, records: list[bytes], origin: str) -> int:
        return 0

    def close(self) -> None:
        pass


class Loader:
    """Moves records from the log into a sink, remembering its position in ``checkpoint.json``.

    Segments before the writer's current one are finished; once loaded they are deleted (or
    kept with ``keep_segments``). The checkpoint is written only after the sink has the data,
    so a crash between the two re-sends a slice, which the sink's idempotence absorbs.
    """

    def __init__(self, log_dir: str | Path, sink: Sink, *, current_segment=lambda: 1 << 62,
                 keep_segments: bool = False, interval_s: float = 1.0) -> None:
        self.dir = Path(log_dir)
        self.sink = sink
        self.current_segment = current_segment
        self.keep_segments = keep_segments
        self.interval_s = interval_s
        # Slices of about a thousand events, with a pause between them: the loader shares the
        # interpreter with the gateway's event loop, which must not wait behind a long load.
        self.max_slice_bytes = 4 << 20
        self.pause_s = 0.002
        self.loaded = 0           # records handed to the sink by this loader
        self.inserted = 0         # ... of which new to it
        self.torn = 0             # torn tails skipped (crash mid-write: never acknowledged)
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.segment, self.offset = self._read_checkpoint()

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoint.json"

    def _read_checkpoint(self) -> tuple[int, int]:
        try:
            data = orjson.loads(self.checkpoint_path.read_bytes())
            return int(data["segment"]), int(data["offset"])
        except FileNotFoundError:
            return 0, 0
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            # A damaged checkpoint: start over; the sink's idempotence makes that safe.
            return 0, 0

    def _write_checkpoint(self) -> None:
        write_private(self.checkpoint_path,
                      orjson.dumps({"segment": self.segment, "offset": self.offset, "loaded": self.loaded}),
                      sync=True)

    def pending_bytes(self) -> int:
        """Bytes in the log not yet loaded (the backlog)."""
        total = 0
        for seq, path in list_segments(self.dir):
            if seq < self.segment:
                continue
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            total += size - (self.offset if seq == self.segment else 0)
        return max(0, total)

    def load_once(self) -> int:
        """Load everything complete in the log now; returns records loaded."""
        with self._lock:
            before = self.loaded
            current = self.current_segment()
            for seq, path in list_segments(self.dir):
                if seq < self.segment:
                    continue
                if seq > self.segment:
                    self.segment, self.offset = seq, 0
                while True:
                    lines, new_offset = read_complete_lines(path, self.offset, self.max_slice_bytes)
                    if new_offset == self.offset:
                        break
                    records = [line for line in lines if line]
                    if records:
                        self.inserted += self.sink.write(records, f"{seq:08d}-{self.offset:012d}")
                        self.loaded += len(records)
                    self.offset = new_offset
                    self._write_checkpoint()
                    if self.pause_s:
                        time.sleep(self.pause_s)
                if seq < current:
                    # Deleted only once every complete line in it is in the sink: what is left
                    # after the offset must be a torn tail (no newline), never a whole record.
                    if has_complete_line(path, self.offset):
                        raise RuntimeError(f"{path.name}: unread records after offset {self.offset}; "
                                           "segment kept")
                    if path.stat().st_size > self.offset:
                        self.torn += 1
                    self.segment, self.offset = seq + 1, 0
                    self._write_checkpoint()
                    if not self.keep_segments:
                        path.unlink(missing_ok=True)
            return self.loaded - before

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="distillguard-loader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.load_once()
                self.error = None
            except Exception as exc:  # keep serving; the backlog metric and status show it
                self.error = f"{type(exc).__name__}: {exc}"

    def stop(self, final_load: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        if final_load:
            self.load_once()
