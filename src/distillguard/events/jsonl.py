"""JSON Lines event logs: streamed reading (plain or gzip) with strict or quarantine mode, and writing.

Memory stays bounded by one line: files of any size stream through. Bad lines either stop the
read with one clear error (strict, the default) or go to a quarantine side file with the reason,
so nothing is silently lost.
"""

from __future__ import annotations

import base64
import gzip
import io
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import orjson

from distillguard.errors import BadInputError, FieldError
from distillguard.events.schema import Event, event_from_obj

GZIP_MAGIC = b"\x1f\x8b"
# A single line above this is refused rather than decoded (a runaway payload, or a binary file).
DEFAULT_MAX_LINE_BYTES = 64 * 1024 * 1024


@dataclass
class ReadStats:
    """Counts for one read: lines seen, events produced, lines quarantined."""

    lines: int = 0
    events: int = 0
    bad: int = 0


class Quarantine:
    """Side file (JSON Lines) receiving every bad input line with where it came from and why."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.count = 0
        self._fh: IO[bytes] | None = None

    def add(self, source: str, line: int, field: str | None, error: str, raw: bytes) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "ab")
        record: dict[str, Any] = {"source": source, "line": line, "field": field, "error": error}
        try:
            record["raw"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            record["raw_base64"] = base64.b64encode(raw).decode("ascii")
        self._fh.write(orjson.dumps(record) + b"\n")
        self.count += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "Quarantine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a file for reading bytes, transparently un-gzipping by magic number (not by name)."""
    raw = open(path, "rb")
    head = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
    if head == GZIP_MAGIC:
        return io.BufferedReader(gzip.GzipFile(fileobj=raw, mode="rb"), buffer_size=1 << 20)
    return raw


def iter_jsonl(path: str | Path, *, quarantine: Quarantine | None = None, stats: ReadStats | None = None,
               max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[Event]:
    """Yield events from a JSON Lines file, one line at a time.

    Strict when ``quarantine`` is None: the first bad line raises :class:`BadInputError`
    naming file, line and field. Otherwise bad lines are written to the quarantine and skipped.
    Blank lines are not events and are ignored.
    """
    source = str(path)
    stats = stats if stats is not None else ReadStats()
    try:
        fh = open_binary(path)
    except FileNotFoundError:
        raise BadInputError("no such file", source=source) from None
    except IsADirectoryError:
        raise BadInputError("is a directory, expected an event log file", source=source) from None
    except PermissionError:
        raise BadInputError("permission denied", source=source) from None
    lineno = 0
    with fh:
        try:
            for lineno, line in enumerate(fh, 1):
                stats.lines = lineno
                if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
                    line = line[3:]  # a UTF-8 byte-order mark written by some editors
                if not line.strip():
                    continue
                problem: tuple[str | None, str] | None = None
                if len(line) > max_line_bytes:
                    problem = (None, f"line of {len(line):,} bytes exceeds the {max_line_bytes:,}-byte limit")
                else:
                    try:
                        obj = orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        problem = (None, f"malformed JSON ({_short(exc)})")
                    else:
                        try:
                            event = event_from_obj(obj)
                        except FieldError as exc:
                            problem = (exc.field, exc.message)
                        else:
                            stats.events += 1
                            yield event
                            continue
                field, message = problem
                if quarantine is None:
                    raise BadInputError(message, source=source, line=lineno, field=field)
                stats.bad += 1
                quarantine.add(source, lineno, field, message, line.rstrip(b"\r\n"))
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise BadInputError(f"corrupt or truncated gzip data after line {lineno} ({exc})",
                                source=source, line=lineno + 1) from None


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 120 else text[:117] + "..."


class JsonlWriter:
    """Append events (or plain dicts) as JSON Lines; gzip when the name ends in ``.gz``."""

    def __init__(self, path: str | Path, *, compress: bool | None = None, compresslevel: int = 3) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if compress if compress is not None else self.path.suffix == ".gz":
            self._fh: IO[bytes] = gzip.open(self.path, "wb", compresslevel=compresslevel)
        else:
            self._fh = open(self.path, "wb")
        self._buffer: list[bytes] = []
        self.count = 0

    def write(self, record: Event | dict[str, Any]) -> None:
        obj = record.to_dict() if isinstance(record, Event) else record
        self._buffer.append(orjson.dumps(obj))
        self.count += 1
        if len(self._buffer) >= 2048:
            self._flush()

    def write_many(self, records: Iterable[Event | dict[str, Any]]) -> None:
        for record in records:
            self.write(record)

    def _flush(self) -> None:
        if self._buffer:
            self._fh.write(b"\n".join(self._buffer) + b"\n")
            self._buffer.clear()

    def close(self) -> None:
        self._flush()
        self._fh.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
