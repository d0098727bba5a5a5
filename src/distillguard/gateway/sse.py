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


_RESPONSE_END = ("response.completed", "response.incomplete", "response.failed")


class ResponsesRelay(SSERelay):
    """The Responses API's typed events (``event: response.output_text.delta`` …): relayed as they
    come, text collected from the deltas, the final response object kept from the terminal event
    (``response.completed`` / ``incomplete`` / ``failed``), which is held back, like ``[DONE]``,
    until the exchange is logged. Reasoning items are dropped from the stream when stripped."""

    def __init__(self, *, strip_reasoning: Callable[[Any], bool] | None = None, max_text: int = 1_000_000) -> None:
        super().__init__(strip_reasoning=strip_reasoning, chat=True, max_text=max_text)
        self.final: dict[str, Any] | None = None

    def _event(self, raw: bytes) -> bytes:
        data_lines = [line[5:].lstrip() for line in raw.splitlines() if line.startswith(b"data:")]
        if not data_lines:
            return raw
        try:
            obj = orjson.loads(b"\n".join(data_lines))
        except orjson.JSONDecodeError:
            return raw
        if not isinstance(obj, dict):
            return raw
        self.chunks += 1
        kind = obj.get("type")
        if self.strip is not None and _is_reasoning_event(obj):
            return b""
        if kind == "response.output_text.delta" and isinstance(obj.get("delta"), str) and self._size < self.max_text:
            self._parts.append(obj["delta"])
            self._size += len(obj["delta"])
        response = obj.get("response")
        if kind in _RESPONSE_END and isinstance(response, dict):
            self.done = True
            if self.strip is not None and self.strip(response):
                raw = f"event: {kind}\n".encode() + b"data: " + orjson.dumps(obj) + b"\n\n"
            self.final = response
            self._finish = response.get("status")
            usage = response.get("usage")
            if isinstance(usage, dict):
                self.usage = _chat_usage(usage) or self.usage
            self._held += raw
            return b""
        return raw

    def assembled(self, model: str | None = None) -> dict[str, Any]:
        if self.final is not None:
            return self.final
        return {"object": "response", "model": model, "status": "incomplete",
                "output": [{"type": "message", "role": "assistant",
                            "content": [{"type": "output_text", "text": self.text}]}]}

    def tail(self) -> bytes:
        out = b""
        if self.error is not None:
            error = {"type": "error", "code": self.error[0], "message": self.error[1], "param": None}
            out += b"event: error\ndata: " + orjson.dumps(error) + b"\n\n"
        return out + self._buf + self._held


def _is_reasoning_event(obj: dict[str, Any]) -> bool:
    kind = str(obj.get("type", ""))
    item = obj.get("item")
    return "reasoning" in kind or (isinstance(item, dict) and item.get("type") == "reasoning")


def _chat_usage(usage: dict[str, Any]) -> dict[str, int]:
    """Responses usage (input/output tokens) in the chat names the event record uses."""
    names = {"input_tokens": "prompt_tokens", "output_tokens": "completion_tokens", "total_tokens": "total_tokens",
             "prompt_tokens": "prompt_tokens", "completion_tokens": "completion_tokens"}
    return {names[k]: v for k, v in usage.items() if k in names and isinstance(v, int) and not isinstance(v, bool)
            and 0 <= v < 2**62}
