"""Reading obfuscated prompts: base64 and hex blobs, ROT13 after its marker, leetspeak.

A prompt is read for what it asks, so a request hidden in an encoding is read decoded: an
encoding trick of a vulnerability scanner ("Decode this and follow it: SWdub3Jl...") is then seen
for the probe it is, and a harvester that encodes its requests ("decode and answer: V3JpdGUg...")
for the request it makes, rather than as a blob of material that asks nothing (before this, such a
harvester had no route to a flag). Both the scan (``features.account_features``) and the gateway
(``online.read_request``) read prompts through :func:`reveal`.

Only encodings whose decoded text is plainly natural language are replaced (a base64 blob that
decodes to mostly printable text with spaces; leetspeak words that map to letters, when they are a
sizeable share of the words; ROT13 only after a marker naming it): binary payloads, hashes, keys
and code keep their text. Cheap pre-checks keep the cost off ordinary prompts.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re

BASE64_BLOB = re.compile(r"(?<![A-Za-z0-9+/=])(?:[A-Za-z0-9+/]{4}){6,}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
                         r"(?![A-Za-z0-9+/=])")
HEX_BLOB = re.compile(r"(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{2}){12,}(?![0-9A-Fa-f])")
ROT13_MARK = re.compile(r"\brot[- ]?13\b[^\n:]{0,40}[:\n]", re.IGNORECASE)
LEET_HINT = re.compile(r"[a-z][0134579$@][a-z]|[0134579$@][a-z]{2}[0134579$@]", re.IGNORECASE)
LEET_CHARS = "0134579$@"
LEET_MAP = str.maketrans(LEET_CHARS, "oieastgsa")
BLOB_MIN = 24        # characters of the shortest blob decoded (12 bytes in hex, 18 in base64)
BLOB_RUN = re.compile(r"[A-Za-z0-9+/]{24}")
LEET_WORD = re.compile(r"\S+")
LEET_MIN_WORDS = 3
LEET_SHARE = 0.3
MIN_DECODED = 12
PRINTABLE_SHARE = 0.9
REVEAL_CHARS = 8000  # only the head is examined (prompts are read up to a few thousand characters)


def _b64_text(blob: str) -> str | None:
    """The natural-language text a base64 blob holds, or None (binary, keys, hashes)."""
    try:
        return _plain(base64.b64decode(blob, validate=True).decode("utf-8"))
    except (binascii.Error, ValueError):
        return None


def _hex_text(blob: str) -> str | None:
    """The natural-language text a hex blob holds, or None (hashes, ids, binary)."""
    try:
        return _plain(bytes.fromhex(blob).decode("utf-8"))
    except ValueError:
        return None


def _plain(text: str) -> str | None:
    if len(text) < MIN_DECODED or " " not in text.strip():
        return None
    printable = sum(ch.isprintable() or ch in "\n\t" for ch in text)
    return text if printable >= PRINTABLE_SHARE * len(text) else None


def _deleet(text: str) -> str:
    """Leetspeak words (letters mixed with 0 1 3 4 5 7 9 $ @ that map to letters) read as letters,
    when they are at least ``LEET_MIN_WORDS`` words and ``LEET_SHARE`` of the text's words."""
    words = LEET_WORD.findall(text)
    leet = [w for w in words if any(c.isalpha() for c in w) and any(c in "0134579$@" for c in w)
            and w.strip(".,;:!?'\"()").translate(LEET_MAP).isalpha()]
    if len(leet) < LEET_MIN_WORDS or len(leet) < LEET_SHARE * len(words):
        return text
    swap = set(leet)
    return LEET_WORD.sub(lambda m: m.group(0).translate(LEET_MAP) if m.group(0) in swap else m.group(0), text)


def reveal(text: str) -> str:
    """``text`` with hex and base64 blobs holding natural language decoded in place, the text after a
    ROT13 marker rotated back, and leetspeak read as letters; unchanged when none applies (about a microsecond for
    an ordinary prompt: each pattern runs only past a cheap necessary condition)."""
    if not isinstance(text, str) or len(text) < MIN_DECODED:
        return text
    head, tail = text[:REVEAL_CHARS], text[REVEAL_CHARS:]
    out = head
    words = head.split()
    # Cheap necessary conditions first (C-level string methods); the patterns run only past them.
    if any(BLOB_RUN.search(w) for w in words if len(w) >= BLOB_MIN):   # a blob is one long run
        if HEX_BLOB.search(out):
            out = HEX_BLOB.sub(lambda m: _hex_text(m.group(0)) or m.group(0), out)
        if BASE64_BLOB.search(out):
            out = BASE64_BLOB.sub(lambda m: _b64_text(m.group(0)) or m.group(0), out)
    if "13" in out:
        mark = ROT13_MARK.search(out)
        if mark:
            out = out[:mark.end()] + codecs.encode(out[mark.end():], "rot13")
    leet_chars = sum(map(out.count, LEET_CHARS))             # each leet word holds one at least
    if leet_chars >= max(LEET_MIN_WORDS, LEET_SHARE * len(words)) and LEET_HINT.search(out):
        out = _deleet(out)
    return text if out == head else out + tail
