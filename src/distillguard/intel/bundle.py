"""Reading STIX bundles: streamed object by object (a bundle may be larger than memory), with
the checks an import relies on, each failure naming the object.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from distillguard.errors import BadInputError
from distillguard.events.schema import MAX_JSON_DEPTH, nesting_exceeds
from distillguard.intel.vocab import parse_ts

MAX_OBJECT_CHARS = 4 << 20   # one STIX object larger than this is refused (no object of ours comes near)
_CHUNK = 1 << 20
_ID = re.compile(r"^([a-z0-9][a-z0-9-]*[a-z0-9])--[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_WS = " \t\r\n"
_DECODER = json.JSONDecoder()


@dataclass
class BundleHeader:
    """Top-level members of the bundle other than ``objects`` (known once reading is done)."""

    fields: dict[str, Any] = field(default_factory=dict)
    objects: int = 0


class _Stream:
    """A text buffer over a file that grows until the next JSON value decodes."""

    def __init__(self, fh, source: str) -> None:
        self.fh = fh
        self.source = source
        self.buf = ""
        self.pos = 0
        self.eof = False

    def fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = self.fh.read(_CHUNK)
        except UnicodeDecodeError:
            raise BadInputError("bundle is not UTF-8 text", source=self.source) from None
        if not data:
            self.eof = True
            return False
        self.buf = self.buf[self.pos:] + data
        self.pos = 0
        return True

    def peek(self) -> str:
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WS:
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                return ""

    def expect(self, char: str, what: str) -> None:
        got = self.peek()
        if got != char:
            found = repr(got) if got else "end of file"
            raise BadInputError(f"malformed JSON: expected {what}, found {found}", source=self.source)
        self.pos += 1

    def value(self, what: str) -> Any:
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except RecursionError:
                raise BadInputError(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels", source=self.source) from None
            except json.JSONDecodeError as exc:
                if len(self.buf) - self.pos > MAX_OBJECT_CHARS:
                    raise BadInputError(f"{what} is larger than {MAX_OBJECT_CHARS:,} characters or malformed JSON "
                                        f"({exc.msg})", source=self.source) from None
                if self.fill():
                    continue
                raise BadInputError(f"malformed JSON in {what} ({exc.msg})", source=self.source) from None
            if end == len(self.buf) and self.fill():   # a number cut at the chunk's end: read on
                continue
            self.pos = end
            return value


def read_bundle(path: str | Path, header: BundleHeader) -> Iterator[dict[str, Any]]:
    """Yield the bundle's objects one at a time; ``header`` is filled in as the file is read.

    Raises :class:`BadInputError` for anything that is not a STIX 2.1 bundle, naming the object.
    """
    source = str(path)
    try:
        fh = open(path, "r", encoding="utf-8")
    except FileNotFoundError:
        raise BadInputError("no such bundle file", source=source) from None
    except IsADirectoryError:
        raise BadInputError("is a directory, expected a STIX bundle", source=source) from None
    with fh:
        stream = _Stream(fh, source)
        if stream.peek() != "{":
            raise BadInputError("not a STIX bundle (expected a JSON object)", source=source)
        stream.pos += 1
        seen_objects = False
        while True:
            if stream.peek() == "}":
                stream.pos += 1
                break
            if header.fields or seen_objects:
                stream.expect(",", "',' or '}'")
            key = stream.value("a member name")
            if not isinstance(key, str):
                raise BadInputError("malformed JSON: member name is not a string", source=source)
            stream.expect(":", "':'")
            if key != "objects":
                header.fields[key] = stream.value(f"member {key!r}")
                if key == "type" and header.fields[key] != "bundle":
                    raise BadInputError(f"not a STIX bundle (type {str(header.fields[key])[:40]!r})", source=source)
                continue
            seen_objects = True
            stream.expect("[", "'[' (the objects array)")
            if stream.peek() == "]":
                stream.pos += 1
                continue
            while True:
                obj = stream.value(f"object #{header.objects + 1}")
                header.objects += 1
                check_object(obj, header.objects, source)
                yield obj
                if stream.peek() == ",":
                    stream.pos += 1
                    continue
                stream.expect("]", "',' or ']' in the objects array")
                break
        if stream.peek():
            raise BadInputError("malformed JSON: content after the bundle", source=source)
    check_header(header, source)


def check_header(header: BundleHeader, source: str) -> None:
    fields = header.fields
    if fields.get("type") != "bundle":
        raise BadInputError("not a STIX bundle (no \"type\": \"bundle\")", source=source)
    if not isinstance(fields.get("id"), str) or not fields["id"].startswith("bundle--"):
        raise BadInputError("not a STIX bundle (no bundle id)", source=source)


def check_object(obj: Any, index: int, source: str) -> None:
    """The STIX 2.1 rules an import relies on (stix2-validator is far too slow for 100k objects)."""
    if not isinstance(obj, dict):
        raise BadInputError(f"object #{index} is not a JSON object", source=source)
    kind, oid = obj.get("type"), obj.get("id")
    where = f"object #{index} ({str(oid)[:80]})"
    if not isinstance(kind, str) or not isinstance(oid, str):
        raise BadInputError(f"{where}: every STIX object needs 'type' and 'id'", source=source)
    if nesting_exceeds(obj):      # its digest (orjson) could not even be computed
        raise BadInputError(f"{where}: nested deeper than {MAX_JSON_DEPTH} levels", source=source)
    m = _ID.match(oid)
    if not m or m.group(1) != kind:
        raise BadInputError(f"{where}: id must be '{kind}--<uuid>'", source=source)
    if "spec_version" in obj and obj["spec_version"] != "2.1":
        raise BadInputError(f"{where}: spec_version {str(obj['spec_version'])[:10]!r}, only STIX 2.1 is accepted",
                            source=source)
    created, modified = obj.get("created"), obj.get("modified")
    for name in ("created", "modified"):
        if name in obj and parse_ts(obj[name]) is None:
            raise BadInputError(f"{where}: {name} is not a STIX timestamp", field=name, source=source)
    if created is not None and modified is not None and parse_ts(modified) < parse_ts(created):
        raise BadInputError(f"{where}: modified {modified} is before created {created}", field="modified",
                            source=source)
    if "confidence" in obj:
        c = obj["confidence"]
        if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c <= 100:
            raise BadInputError(f"{where}: confidence must be an integer 0-100", field="confidence", source=source)
    if "revoked" in obj and not isinstance(obj["revoked"], bool):
        raise BadInputError(f"{where}: revoked must be true or false", field="revoked", source=source)
    if kind == "indicator":
        for name in ("pattern", "pattern_type", "valid_from"):
            if not isinstance(obj.get(name), str):
                raise BadInputError(f"{where}: an indicator needs '{name}'", field=name, source=source)
        start = parse_ts(obj["valid_from"])
        end = parse_ts(obj["valid_until"]) if "valid_until" in obj else None
        if start is None or ("valid_until" in obj and end is None):
            raise BadInputError(f"{where}: valid_from/valid_until must be STIX timestamps", source=source)
        if end is not None and end <= start:
            raise BadInputError(f"{where}: valid_until is not after valid_from", field="valid_until", source=source)
