"""Replaying logged traffic through a gateway in time order (demo, online-detection evaluation).

Each event becomes a request with the account's API key, its own timestamp
(``x-distillguard-replay-ts``, honoured only when the gateway trusts client timestamps), its
client address (``x-forwarded-for``) and its user agent. ``replay`` returns, per account, the
gateway's decision for each of its requests in order.
"""

from __future__ import annotations

import gzip
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable

import httpx
import orjson

from distillguard.events.schema import parse_ts

IDENTITY_KEYS = ("email", "payment", "org", "created")


def load_events(path: Path) -> list[dict[str, Any]]:
    """A lab ``events.jsonl.gz`` in time order, each with ``ts_epoch`` added."""
    opener = gzip.open if str(path).endswith(".gz") else open
    events = []
    with opener(path, "rb") as fh:
        for line in fh:
            ev = orjson.loads(line)
            ev["ts_epoch"] = parse_ts(ev["ts"])
            events.append(ev)
    events.sort(key=lambda e: e["ts_epoch"])
    return events


def keys_for(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """One API key per account (``sk-<account>``), carrying the identity its events show."""
    keys: dict[str, Any] = {}
    for ev in events:
        key = f"sk-{ev['account']}"
        if key in keys:
            continue
        identity = {k: v for k, v in (ev.get("identity") or {}).items() if k in IDENTITY_KEYS and v is not None}
        if isinstance(identity.get("created"), str):
            identity["created"] = parse_ts(identity["created"])
        keys[key] = {"account": ev["account"], **identity} if identity else ev["account"]
    return keys


def request_headers(ev: dict[str, Any]) -> dict[str, str]:
    return {"authorization": f"Bearer sk-{ev['account']}", "x-distillguard-replay-ts": repr(ev["ts_epoch"]),
            "x-forwarded-for": ev.get("ip") or "192.0.2.1", "user-agent": ev.get("user_agent") or "replay"}


async def replay(client: httpx.AsyncClient, events: list[dict[str, Any]],
                 progress: Callable[[int], None] | None = None) -> dict[str, list[tuple[str, str]]]:
    """Send the events one by one, in order; (action, reason codes) per account per request."""
    decisions: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for i, ev in enumerate(events):
        r = await client.post(ev.get("endpoint") or "/v1/chat/completions", content=orjson.dumps(ev["request"]),
                              headers=request_headers(ev))
        decisions[ev["account"]].append((r.headers.get("x-distillguard-action", f"http-{r.status_code}"),
                                         r.headers.get("x-distillguard-reason", "")))
        if progress is not None and i % 500 == 0:
            progress(i)
    return decisions


def recorded_answers(events: Iterable[dict[str, Any]]) -> Callable[[httpx.Request], httpx.Response]:
    """An upstream (for ``httpx.MockTransport``) answering each request with the lab's recorded answer."""
    answers: dict[bytes, bytes] = {}
    for ev in events:
        response = ev.get("response")
        body = response if isinstance(response, dict) else {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": response or ""}}]}
        if ev.get("usage"):
            body = {**body, "usage": ev["usage"]}
        answers[orjson.dumps(ev["request"])] = orjson.dumps(body)

    def handler(request: httpx.Request) -> httpx.Response:
        # A stream, not ``content=``: httpx reads bytes content at once, and the gateway relays
        # the upstream's raw stream, which httpx then reports as already consumed.
        return httpx.Response(200, stream=_OneChunk(answers.get(request.content, b'{"choices": []}')),
                              headers={"content-type": "application/json"})
    return handler


class _OneChunk(httpx.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self):
        yield self.data
