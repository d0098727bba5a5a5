"""The gateway's durable event log: append-only segment files, group commit with fsync.

Request handlers call :meth:`DurableLog.append` and await the returned future before they
answer the client, so an answered request is always on disk. One writer thread takes every
record queued since its last pass, writes them with one ``write`` and one ``fdatasync``
(group commit: the fsync cost is shared by all requests in flight), then wakes their handlers.

Segments are ``segment-00000001.jsonl`` …; a restarted log never appends to an old segment (its
tail may be torn by a crash: readers skip a last line without its newline). The
:class:`Loader` (see :mod:`distillguard.gateway.sinks`) moves records from the log into a sink
and remembers how far it got in a checkpoint file.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from distillguard.errors import BadInputError

_SEGMENT = re.compile(r"^segment-(\d{8})\.jsonl$")


def segment_name(seq: int) -> str:
    return f"segment-{seq:08d}.jsonl"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    out = []
    for path in directory.iterdir():
        m = _SEGMENT.match(path.name)
        if m:
            out.append((int(m.group(1)), path))
    return sorted(out)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class LogStats:
    appended: int = 0
    commits: int = 0
    bytes: int = 0
    fsync_seconds: float = 0.0


class DurableLog:
    """Append-only, fsynced, segmented JSON Lines log with group commit."""

    def __init__(self, directory: str | Path, *, segment_bytes: int = 64 << 20, sync: bool = True) -> None:
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BadInputError(f"cannot create the log directory ({exc.strerror})", source=str(self.dir)) from None
        if not os.access(self.dir, os.W_OK):
            raise BadInputError("log directory is not writable", source=str(self.dir))
        self.segment_bytes = segment_bytes
        self.sync = sync
        existing = list_segments(self.dir)
        self._seq = (existing[-1][0] if existing else 0) + 1
        self._fh = self._open_segment()
        self._pending: list[tuple[bytes, asyncio.Future | None, asyncio.AbstractEventLoop | None]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._queued = 0          # records ever queued ...
        self._done = 0            # ... and ever committed (or failed)
        self.stats = LogStats()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="distillguard-log-writer", daemon=True)
        self._thread.start()

    # -- writer side -------------------------------------------------------------------------
    def _open_segment(self):
        path = self.dir / segment_name(self._seq)
        fh = open(path, "ab", buffering=0)
        if self.sync:
            _fsync_dir(self.dir)  # the new file's name is durable too
        return fh

    @property
    def current_segment(self) -> int:
        return self._seq

    def backlog(self) -> int:
        """Records queued but not yet on disk."""
        return len(self._pending)

    def append(self, record: bytes) -> asyncio.Future:
        """Queue one JSON line (without newline); the future completes once it is on disk."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._enqueue(record, fut, loop)
        return fut

    def append_nowait(self, record: bytes) -> None:
        """Queue a record without waiting for it (used outside an event loop, e.g. tests)."""
        self._enqueue(record, None, None)

    def _enqueue(self, record: bytes, fut, loop) -> None:
        if self._closed:
            raise RuntimeError("the event log is closed")
        if self.error is not None:
            raise RuntimeError(f"the event log failed: {self.error}")
        with self._lock:
            self._pending.append((record, fut, loop))
            self._queued += 1
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                batch, self._pending = self._pending, []
                self._wake.clear()
                closing = self._closed
            if batch:
                self._commit(batch)
            if closing and not self._pending:
                return

    def _commit(self, batch: list) -> None:
        try:
            data = b"".join(rec + b"\n" for rec, _, _ in batch)
            self._fh.write(data)
            if self.sync:
                t = time.perf_counter()
                os.fdatasync(self._fh.fileno())
                self.stats.fsync_seconds += time.perf_counter() - t
            self.stats.appended += len(batch)
            self.stats.commits += 1
            self.stats.bytes += len(data)
            if self._fh.tell() >= self.segment_bytes:
                self._fh.close()
                self._seq += 1
                self._fh = self._open_segment()
            error = None
        except BaseException as exc:  # a full disk must fail the requests, not hang them
            self.error = error = exc
        self._done += len(batch)
        by_loop: dict = {}
        for _, fut, loop in batch:
            if fut is not None:
                by_loop.setdefault(loop, []).append(fut)
        for loop, futures in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, futures, error)
            except RuntimeError:  # the loop is gone (shutdown); the records are on disk anyway
                pass

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until everything queued so far is on disk (or failed); False on timeout."""
        with self._lock:
            target = self._queued
        deadline = time.monotonic() + timeout
        while self._done < target and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.0005)
        return self._done >= target

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._wake.set()
        self._thread.join(timeout=30)
        try:
            self._fh.close()
        except OSError:
            pass


def _resolve(futures: list[asyncio.Future], error: BaseException | None) -> None:
    for fut in futures:
        if fut.done():
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(RuntimeError(f"event log write failed: {error}"))


def read_complete_lines(path: Path, offset: int, max_bytes: int = 16 << 20) -> tuple[list[bytes], int]:
    """Whole lines of ``path`` from ``offset`` (at most about ``max_bytes``); returns them and the
    offset just after the last newline read. A torn last line is left for later (or forever)."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(max_bytes)
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    return data[:end].split(b"\n"), offset + end + 1


def iter_log_records(directory: str | Path) -> Iterator[bytes]:
    """Every complete record in a log directory, oldest first (for audits and tests)."""
    for _, path in list_segments(Path(directory)):
        offset = 0
        while True:
            lines, new_offset = read_complete_lines(path, offset)
            if new_offset == offset:
                break
            yield from (line for line in lines if line)
            offset = new_offset
