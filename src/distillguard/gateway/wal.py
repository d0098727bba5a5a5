"""The gateway's durable event log: append-only segment files, group commit with fsync.

Request handlers call :meth:`DurableLog.append` and await the returned future before they
answer the client, so an answered request is always on disk. One writer thread takes every
record queued since its last pass, writes them with one ``write`` and one ``fdatasync``
(group commit: the fsync cost is shared by all requests in flight), then wakes their handlers.

Segments are ``segment-00000001.jsonl`` …; a restarted log never appends to an old segment (its
tail may be torn by a crash: readers skip a last line without its newline). The
:class:`Loader` (see :mod:`distillguard.gateway.sinks`) moves records from the log into a sink
and remembers how far it got in a checkpoint file.

Record format (stable; the evidence chain and the loader depend on it): one JSON object per line,
UTF-8, terminated by ``\n``, no size limit (readers read a line of any length). A batch that
cannot be written whole (disk full, I/O error) is cut back off the segment, so a failed write
never leaves a torn record between good ones; its requests get :class:`LogWriteError` (the
gateway answers 503), unless a spool is configured (``spool_bytes``, the gateway's ``log.fail =
"open"``): then failed records wait in memory, in order, and are written first when the disk
takes writes again (lost only if the process dies before that).
``on_commit`` (the evidence tree's hook) is called by the writer thread with the tags of the records
just written and fsynced, in the order they now stand in the log: a record whose write failed never
reaches it, and a spooled one reaches it when it is finally written.
Segments are created 0600 in a 0700 directory (they hold every prompt and answer).
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from distillguard.errors import BadInputError
from distillguard.private import open_private, private_dir

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


class LogWriteError(RuntimeError):
    """The log could not store a record (disk full, I/O error): the request must not be answered
    as if it were logged."""


@dataclass
class LogStats:
    appended: int = 0
    commits: int = 0
    bytes: int = 0
    fsync_seconds: float = 0.0
    failed: int = 0               # records whose write failed (their requests were refused)
    spooled: int = 0              # records held in memory after a failed write (fail open)


class DurableLog:
    """Append-only, fsynced, segmented JSON Lines log with group commit."""

    def __init__(self, directory: str | Path, *, segment_bytes: int = 64 << 20, sync: bool = True,
                 retry_s: float = 1.0, spool_bytes: int = 0,
                 on_commit: Callable[[list[Any]], None] | None = None) -> None:
        self.dir = Path(directory)
        try:
            private_dir(self.dir)
        except OSError as exc:
            raise BadInputError(f"cannot create the log directory ({exc.strerror})", source=str(self.dir)) from None
        if not os.access(self.dir, os.W_OK):
            raise BadInputError("log directory is not writable", source=str(self.dir))
        self.segment_bytes = segment_bytes
        self.sync = sync
        existing = list_segments(self.dir)
        self._seq = (existing[-1][0] if existing else 0) + 1
        self._fh = self._open_segment()
        self._pending: list[tuple[bytes, asyncio.Future | None, asyncio.AbstractEventLoop | None, Any]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._queued = 0          # records ever queued ...
        self._done = 0            # ... and ever committed (or failed)
        self.stats = LogStats()
        self.error: BaseException | None = None
        self.failed_at = 0.0      # monotonic time of the latest failed write
        self.retry_s = retry_s    # how long after a failed write new requests are refused outright
        self.spool_bytes = spool_bytes          # fail open: failed records held up to this many bytes
        self._retry: list[tuple[bytes, Any]] = []   # ... here (record, tag), oldest first
        self._retry_bytes = 0
        self.on_commit = on_commit              # tags of records on disk, in log order
        self.commit_hook_errors = 0
        self._thread = threading.Thread(target=self._run, name="distillguard-log-writer", daemon=True)
        self._thread.start()

    # -- writer side -------------------------------------------------------------------------
    def _open_segment(self):
        path = self.dir / segment_name(self._seq)
        fh = open(open_private(path), "ab", buffering=0)
        self._size = os.fstat(fh.fileno()).st_size
        if self.sync:
            _fsync_dir(self.dir)  # the new file's name is durable too
        return fh

    def failing(self) -> bool:
        """True when new work must be refused (503) rather than answered unlogged: the latest write
        failed less than ``retry_s`` ago (after that requests are let through again, so the log
        notices when space comes back), or, failing open, the spool is full."""
        if self.spool_bytes:
            return self._retry_bytes >= self.spool_bytes
        return self.error is not None and time.monotonic() - self.failed_at < self.retry_s

    def spooled(self) -> int:
        """Records held in memory, waiting for the disk (fail open)."""
        return len(self._retry)

    @property
    def current_segment(self) -> int:
        return self._seq

    def backlog(self) -> int:
        """Records queued but not yet on disk."""
        return len(self._pending)

    def append(self, record: bytes, tag: Any = None) -> asyncio.Future:
        """Queue one JSON line (without newline); the future completes once it is on disk. ``tag``
        (if not None) goes to ``on_commit`` once the record is written."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._enqueue(record, fut, loop, tag)
        return fut

    def append_nowait(self, record: bytes, tag: Any = None) -> None:
        """Queue a record without waiting for it (used outside an event loop, e.g. tests)."""
        self._enqueue(record, None, None, tag)

    def _enqueue(self, record: bytes, fut, loop, tag) -> None:
        if self._closed:
            raise RuntimeError("the event log is closed")
        with self._lock:
            self._pending.append((record, fut, loop, tag))
            self._queued += 1
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.retry_s if self._retry else None)
            with self._lock:
                batch, self._pending = self._pending, []
                self._wake.clear()
                closing = self._closed
            if batch or self._retry:
                self._commit(batch)
            if closing and not self._pending:
                return

    def _write_all(self, data: bytes) -> None:
        # A raw write may store only part of the data (a nearly full disk): go on until all of it
        # is written or the OS refuses with an error. Ignoring a short write once acknowledged a
        # record whose tail never reached the disk (the exchange lost on a full disk).
        view = memoryview(data)
        while view:
            n = self._fh.write(view)
            if not n:
                raise OSError(28, "no progress writing the event log")
            view = view[n:]

    def _commit(self, batch: list) -> None:
        retry, self._retry, self._retry_bytes = self._retry, [], 0     # spooled records go first
        fresh = b"".join(rec + b"\n" for rec, _, _, _ in batch)
        data = b"".join(rec + b"\n" for rec, _ in retry) + fresh
        start = self._size
        written = False
        try:
            self._write_all(data)
            if self.sync:
                t = time.perf_counter()
                os.fdatasync(self._fh.fileno())
                self.stats.fsync_seconds += time.perf_counter() - t
            self._size = start + len(data)
            self.stats.appended += len(batch) + len(retry)
            self.stats.commits += 1
            self.stats.bytes += len(data)
            error = None
            self.error = None
            written = True
        except BaseException as exc:  # a full disk must fail the requests, not hang them
            self.error = exc
            self.failed_at = time.monotonic()
            error = LogWriteError(f"event log write failed: {exc}")
            self._cut_back(start)
            self._retry, self._retry_bytes = retry, len(data) - len(fresh)   # answered already: kept
            if self.spool_bytes and self._retry_bytes + len(fresh) <= self.spool_bytes:
                self._retry = retry + [(rec, tag) for rec, _, _, tag in batch]
                self._retry_bytes = len(data)
                self.stats.spooled += len(batch)
                error = None                     # fail open: answered now, written when it can be
            else:
                self.stats.failed += len(batch)
        if written and self.on_commit is not None:      # before the answers are released
            self._committed([tag for _, tag in retry] + [tag for _, _, _, tag in batch])
        try:
            if error is None and self._size >= self.segment_bytes:
                self._fh.close()
                self._seq += 1
                self._fh = self._open_segment()
        except OSError as exc:          # no room for a new segment: the next write retries
            self.error, self.failed_at = exc, time.monotonic()
        self._done += len(batch)
        by_loop: dict = {}
        for _, fut, loop, _ in batch:
            if fut is not None:
                by_loop.setdefault(loop, []).append(fut)
        for loop, futures in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, futures, error)
            except RuntimeError:  # the loop is gone (shutdown); the records are on disk anyway
                pass

    def _committed(self, tags: list[Any]) -> None:
        tags = [t for t in tags if t is not None]
        if not tags:
            return
        try:
            self.on_commit(tags)       # type: ignore[misc]
        except Exception:              # never stop the writer; counted (the tree's own checks see the gap)
            self.commit_hook_errors += 1

    def _cut_back(self, size: int) -> None:
        """Remove a partly written batch, so the next record starts on a line of its own."""
        try:
            os.ftruncate(self._fh.fileno(), size)
            self._size = size
        except (OSError, ValueError):
            # Cannot cut (closed file, I/O error): never append after a torn line; a new segment
            # starts clean, and readers skip the torn last line of this one.
            try:
                self._fh.close()
            except OSError:
                pass
            self._seq += 1
            try:
                self._fh = self._open_segment()
            except OSError:
                pass   # the next commit fails again and retries

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
            fut.set_exception(error)


def read_complete_lines(path: Path, offset: int, max_bytes: int = 16 << 20) -> tuple[list[bytes], int]:
    """Whole lines of ``path`` from ``offset`` (about ``max_bytes``, or one whole line when a line
    is longer: records have no size limit); returns them and the offset just after the last
    newline read. A torn last line (no newline yet) is left for later (or forever)."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(max_bytes)
        end = data.rfind(b"\n")
        if end < 0 and len(data) == max_bytes:   # a record longer than a slice: read to its end
            parts = [data]
            while True:
                more = fh.read(max_bytes)
                if not more:
                    break
                parts.append(more)
                newline = more.find(b"\n")
                if newline >= 0:
                    data = b"".join(parts)
                    end = len(data) - len(more) + newline
                    break
    if end < 0:
        return [], offset
    return data[:end].split(b"\n"), offset + end + 1


def has_complete_line(path: Path, offset: int, chunk: int = 1 << 20) -> bool:
    """True when ``path`` holds a newline at or after ``offset`` (a whole record not yet read)."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        while True:
            data = fh.read(chunk)
            if not data:
                return False
            if b"\n" in data:
                return True


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
