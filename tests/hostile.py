"""Hypothesis strategies for hostile outside input: JSON of any shape (deep, huge, unicode, odd
numbers), raw bytes, header values, and near-valid OpenAI request bodies with one part broken."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

TEXT = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["", " ", "\u202e", "\x00", "é" * 50, "\ud7ff", "𝕏" * 10, "null", "[DONE]", "a" * 300])
NUMBERS = st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False, allow_infinity=False)
SCALARS = st.none() | st.booleans() | NUMBERS | TEXT
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                    max_leaves=20)


def nest(depth: int, leaf: Any = 1, kind: str = "list") -> Any:
    value = leaf
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


DEEP = st.builds(nest, st.integers(min_value=1, max_value=1100), st.just(1), st.sampled_from(["list", "dict"]))
ANY_JSON = JSON | DEEP

MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]) | TEXT},
                                optional={"content": TEXT | st.lists(ANY_JSON, max_size=3) | ANY_JSON,
                                          "name": TEXT})
CHAT_BODY = st.fixed_dictionaries(
    {"messages": st.lists(MESSAGE, max_size=4) | ANY_JSON},
    optional={"model": TEXT | ANY_JSON, "max_tokens": NUMBERS | ANY_JSON, "stream": st.booleans() | ANY_JSON,
              "temperature": NUMBERS | TEXT, "metadata": ANY_JSON, "logprobs": st.booleans() | ANY_JSON,
              "tools": ANY_JSON, "user": TEXT | ANY_JSON})
BODY = CHAT_BODY | ANY_JSON

# (h11, the client's HTTP library, refuses to send values with leading or trailing blanks)
HEADER_VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=60).map(str.strip) | st.sampled_from(
    ["", "Bearer", "bearer sk-alice-0001", "Bearer sk-alice-0001 extra", "Basic Zm9vOmJhcg==", "1e309",
     "-1", "nan", "1791201600", "127.0.0.1, 10.0.0.1", "::1", "999.1.1.1", "[::1]:80"])


def encode(value: Any) -> bytes:
    """JSON text of ``value`` even where orjson refuses (too deep, big integers)."""
    import json
    import sys
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))      # DEEP nests up to 1,100 levels
    try:
        return json.dumps(value).encode()
    finally:
        sys.setrecursionlimit(limit)
