"""A fast OpenAI-compatible upstream that answers every request with a fixed completion.

For demos, tests and benchmarks of the gateway: a raw ASGI app (no framework), so that the
upstream is never what a measurement measures. Supports chat and text completions, SSE
streaming (the text in ``chunks`` pieces, with a usage chunk when asked), ``/v1/models`` and an
optional delay that stands in for generation time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

DEFAULT_TEXT = ("Here is a careful answer. First, restate the problem in plain terms. Second, list what is known "
                "and what is asked. Third, work through each step, checking units and edge cases as you go. "
                "Finally, state the result and how confident you are in it, and what would change it.")


class FixedCompletionServer:
    def __init__(self, *, text: str = DEFAULT_TEXT, delay_s: float = 0.0, model: str = "fixed-model",
                 chunks: int = 8) -> None:
        self.text = text
        self.delay_s = delay_s
        self.model = model
        self.chunks = max(1, chunks)
        self.requests = 0
        self.completion_tokens = len(text.split())
        self._models = orjson.dumps({"object": "list", "data": [{"id": model, "object": "model", "created": 0,
                                                                  "owned_by": "distillguard"}]})

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        if scope["type"] != "http":
            return await not_http(scope, receive, send)
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/v1/models":
            return await _send(send, 200, self._models)
        if method != "POST" or path not in ("/v1/chat/completions", "/v1/completions"):
            return await _send(send, 404, orjson.dumps({"error": {"message": "not found", "type": "invalid_request_error",
                                                                  "code": "not_found", "param": None}}))
        body = await read_body(receive)
        try:
            request = orjson.loads(body)
            assert isinstance(request, dict)
        except (orjson.JSONDecodeError, AssertionError):
            return await _send(send, 400, orjson.dumps({"error": {"message": "invalid JSON", "type": "invalid_request_error",
                                                                  "code": "invalid_json", "param": None}}))
        self.requests += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        chat = path == "/v1/chat/completions"
        prompt_tokens = len(body) // 4
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": self.completion_tokens,
                 "total_tokens": prompt_tokens + self.completion_tokens}
        created = int(time.time())
        cid = f"cmpl-{self.requests}"
        if request.get("stream") is True:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
            step = max(1, len(self.text) // self.chunks)
            pieces = [self.text[i:i + step] for i in range(0, len(self.text), step)]
            for i, piece in enumerate(pieces):
                last = i == len(pieces) - 1
                if chat:
                    choice = {"index": 0, "delta": {"content": piece} if i else {"role": "assistant", "content": piece},
                              "finish_reason": "stop" if last else None}
                else:
                    choice = {"index": 0, "text": piece, "finish_reason": "stop" if last else None}
                chunk = {"id": cid, "object": "chat.completion.chunk" if chat else "text_completion",
                         "created": created, "model": self.model, "choices": [choice]}
                await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                            "more_body": True})
            if (request.get("stream_options") or {}).get("include_usage"):
                chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.model,
                         "choices": [], "usage": usage}
                await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                            "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            return
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": self.text}, "finish_reason": "stop"}
        else:
            choice = {"index": 0, "text": self.text, "finish_reason": "stop"}
        answer = {"id": cid, "object": "chat.completion" if chat else "text_completion", "created": created,
                  "model": request.get("model") or self.model, "choices": [choice], "usage": usage}
        await _send(send, 200, orjson.dumps(answer))


async def not_http(scope: dict[str, Any], receive, send) -> None:
    """Lifespan events acknowledged (nothing to set up); anything else that is not HTTP ignored."""
    if scope["type"] != "lifespan":
        return
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read_body(receive) -> bytes:
    """The whole request body from an ASGI ``receive`` channel."""
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def _send(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
