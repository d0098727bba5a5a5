"""Shared fixtures: a valid chat event record factory and JSON Lines writers."""

from __future__ import annotations

import copy
import gzip
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import orjson
import pytest
from hypothesis import HealthCheck, settings

# Property-based tests over outside input (tests/test_fuzz_*.py): few examples per run in the
# suite ("ci", the default), many in a deliberate run: DISTILLGUARD_HYPOTHESIS=thorough pytest ...
# (benchmarks/soak.py is the 10,000-inputs-per-target run against real servers).
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("ci", max_examples=20, deadline=None, suppress_health_check=_SLOW_OK,
                          print_blob=True)
settings.register_profile("thorough", max_examples=1000, deadline=None, suppress_health_check=_SLOW_OK)
settings.load_profile(os.environ.get("DISTILLGUARD_HYPOTHESIS", "ci"))

# 2026-10-05T12:00:00Z
BASE_EPOCH = 1791201600


def _make_event(i: int = 0, *, drop: Iterable[str] = (), **overrides: Any) -> dict[str, Any]:
    """A valid chat event record; ``i`` varies ts and prompt so records differ; ``drop`` removes keys."""
    record: dict[str, Any] = {
        "ts": BASE_EPOCH + i,
        "account": "acct-1",
        "key": "key-1",
        "model": "gpt-test",
        "ip": "203.0.113.7",
        "user_agent": "python-requests/2.31",
        "request": {
            "model": "gpt-test",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"Question number {i}?"},
            ],
            "max_tokens": 256,
        },
        "response": {"choices": [{"index": 0, "message": {"role": "assistant", "content": f"Answer {i}."}}]},
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        "status": 200,
    }
    record.update(copy.deepcopy(overrides))
    for name in drop:
        record.pop(name, None)
    return record


@pytest.fixture
def make_event() -> Callable[..., dict[str, Any]]:
    return _make_event


def _encode(line: Any) -> bytes:
    if isinstance(line, bytes):
        return line
    if isinstance(line, str):
        return line.encode("utf-8")
    return orjson.dumps(line)


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    """``write_jsonl(name, lines, gz=False)``: dicts are JSON-encoded, str/bytes written verbatim."""

    def write(name: str, lines: Iterable[Any], *, gz: bool = False) -> Path:
        path = tmp_path / name
        data = b"".join(_encode(line) + b"\n" for line in lines)
        path.write_bytes(gzip.compress(data) if gz else data)
        return path

    return write
