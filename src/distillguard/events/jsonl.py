"""JSON Lines event logs: streamed reading (plain or gzip) with strict or quarantine mode, and writing.

Memory stays bounded by one line: files of any size stream through. Bad lines either stop the
read with one clear error (strict, the default) or go to a quarantine side file with the reason,
so nothing is silently lost.
"""

from __future__ import annotations

import base64
import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import orjson

from distillguard.errors import BadInputError, FieldError
from distillguard.events.schema import Event, event_from_obj, shallow_text
from distillguard.private import open_private

try:
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover - optional accelerator
    _isal_zlib = None

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
        if self._fh is None:   # bad lines are traffic too: owner-only
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(open_private(self.path), "ab")
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


def _decompressor():
    return (_isal_zlib if _isal_zlib is not None else zlib).decompressobj(31)


class TruncatedInput(Exception):
    """The compressed stream ended early; ``tail`` holds the undecodable remainder."""

    def __init__(self, tail: bytes, reason: str) -> None:
        self.tail = tail
        self.reason = reason
        super().__init__(reason)


def iter_lines(path: str | Path, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Lines of a file as bytes, un-gzipping by magic number (not by name), in bounded memory.

    Lines keep their newline only for plain files (callers strip it). Gzip is decoded chunk by chunk (multi-member files too, ISA-L when installed), so the lines
    before a truncated or corrupt tail are still delivered, then :class:`TruncatedInput` is raised.
    """
    with open(path, "rb") as fh:
        head = fh.read(2)
        fh.seek(0)
        if head != GZIP_MAGIC:
            yield from fh
            return
        decomp = _decompressor()
        pending = b""
        while True:
            chunk = fh.read(chunk_size)
            if not chunk:
                break
            problem = None
            parts: list[bytes] = []
            try:
                parts.append(decomp.decompress(chunk))
                while decomp.eof and decomp.unused_data:  # the next gzip member
                    rest = decomp.unused_data
                    if not rest.strip(b"\x00"):
                        break  # zero padding after the last member, as gzip(1) accepts
                    decomp = _decompressor()
                    parts.append(decomp.decompress(rest))
            except Exception as exc:  # zlib.error / isal error: corrupt data
                problem = f"corrupt gzip data ({exc})"
            lines = (pending + b"".join(parts)).split(b"\n")
            pending = lines.pop()
            yield from lines  # whatever decoded before the damage is still delivered
            if problem is not None:
                raise TruncatedInput(pending, problem)
        if not decomp.eof:
            raise TruncatedInput(pending, "gzip data ends before its end-of-stream marker (truncated file?)")
        if pending:
            yield pending


def iter_jsonl(path: str | Path, *, quarantine: Quarantine | None = None, stats: ReadStats | None = None,
               max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[Event]:
    """Yield events from a JSON Lines file, one line at a time.

    Strict when ``quarantine`` is None: the first bad line raises :class:`BadInputError`
    naming file, line and field. Otherwise bad lines are written to the quarantine and skipped.
    Blank lines are not events and are ignored.
    """
    source = str(path)
    stats = stats if stats is not None else ReadStats()
    path_obj = Path(path)
    if not path_obj.exists():
        raise BadInputError("no such file", source=source)
    if path_obj.is_dir():
        raise BadInputError("is a directory, expected an event log file", source=source)
    lineno = 0
    try:
        for lineno, line in enumerate(iter_lines(path), 1):
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
                        event = event_from_obj(obj, shallow=shallow_text(line))
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
    except TruncatedInput as exc:
        if quarantine is None:
            raise BadInputError(f"{exc.reason}; {lineno:,} whole line(s) before it", source=source,
                                line=lineno + 1) from None
        stats.bad += 1
        quarantine.add(source, lineno + 1, None, exc.reason, exc.tail)
    except PermissionError:
        raise BadInputError("permission denied", source=source) from None


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
