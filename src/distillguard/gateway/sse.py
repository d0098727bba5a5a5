"""Server-sent events relay: pass an upstream stream through event by event, and re-assemble it.

The relay forwards complete events as they arrive (rewriting one only when reasoning fields
must be stripped), holds back the terminating ``data: [DONE]`` until the gateway has logged the
exchange durably, and keeps the streamed text, finish reason and usage for the event record.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import orjson

_BOUNDARY = re.compile(rb"\r?\n\r?\n")


class SSERelay:
    def __init__(self, *, strip_reasoning: Callable[[Any], bool] | None = None, chat: bool = True,
                 max_text: int = 1_000_000) -> None:
        self.strip = strip_reasoning
        self.chat = chat
        self.max_text = max_text
        self.done = False
        self.error: tuple[str, str] | None = None
        self.usage: dict[str, int] | None = None
        self.chunks = 0
        self._buf = b""
        self._held = b""
        self._parts: list[str] = []
        self._size = 0
        self._finish: str | None = None
        self._id: str | None = None
        self._model: str | None = None

    def feed(self, chunk: bytes) -> bytes:
        """Take upstream bytes; return the bytes to send the client now."""
        self._buf += chunk
        out = []
        while True:
            m = _BOUNDARY.search(self._buf)
            if m is None:
                break
            raw, self._buf = self._buf[:m.end()], self._buf[m.end():]
            out.append(self._event(raw))
        return b"".join(out)

    def _event(self, raw: bytes) -> bytes:
        data_lines = [line[5:].lstrip() for line in raw.splitlines() if line.startswith(b"data:")]
        if not data_lines:
            return raw
        data = b"\n".join(data_lines)
        if data.strip() == b"[DONE]":
            self.done = True
            self._held += raw
            return b""
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return raw
        if not isinstance(obj, dict):
            return raw
        self.chunks += 1
        self._collect(obj)
        if self.strip is not None and self.strip(obj):
            return b"data: " + orjson.dumps(obj) + b"\n\n"
        return raw

    def _collect(self, obj: dict[str, Any]) -> None:
        if self._id is None and isinstance(obj.get("id"), str):
            self._id = obj["id"]
        if self._model is None and isinstance(obj.get("model"), str):
            self._model = obj["model"]
        usage = obj.get("usage")
        if isinstance(usage, dict):
            clean = {k: v for k, v in usage.items() if k in ("prompt_tokens", "completion_tokens", "total_tokens")
                     and isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**62}
            self.usage = clean or self.usage
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return
        choice = choices[0]
        text = None
        delta = choice.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            text = delta["content"]
        elif isinstance(choice.get("text"), str):
            text = choice["text"]
        if text and self._size < self.max_text:
            self._parts.append(text)
            self._size += len(text)
        if isinstance(choice.get("finish_reason"), str):
            self._finish = choice["finish_reason"]

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def assembled(self, model: str | None = None) -> dict[str, Any]:
        """The stream as one response body (what a non-streaming call would have returned)."""
        choice: dict[str, Any] = {"index": 0, "finish_reason": self._finish}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": self.text}
        else:
            choice["text"] = self.text
        out: dict[str, Any] = {"object": "chat.completion" if self.chat else "text_completion",
                               "model": self._model or model, "choices": [choice]}
        if self._id:
            out["id"] = self._id
        if self.usage:
            out["usage"] = self.usage
        return out

    def tail(self) -> bytes:
        """What is left to send once the upstream is done: an error event if it broke off, any
        partial bytes, then the held ``[DONE]``."""
        out = b""
        if self.error is not None:
            out += b"data: " + orjson.dumps({"error": {"message": self.error[1], "type": "upstream_error",
                                                       "code": self.error[0], "param": None}}) + b"\n\n"
        return out + self._buf + self._held
