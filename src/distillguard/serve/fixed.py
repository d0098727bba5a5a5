"""A fast OpenAI-compatible upstream that answers every request with a fixed completion.

For demos, tests and benchmarks of the gateway: a raw ASGI app (no framework), so that the
upstream is never what a measurement measures. Supports chat and text completions, SSE
streaming (the text in ``chunks`` pieces, with a usage chunk when asked), ``/v1/models`` and an
optional delay that stands in for generation time; the Responses API (plain and streamed),
embeddings, ``/v1/models/{id}``, files and batches come from :mod:`distillguard.serve.fixed_api`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from distillguard.serve import fixed_api

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
        self._model = {"id": model, "object": "model", "created": 0, "owned_by": "distillguard"}
        self._models = orjson.dumps({"object": "list", "data": [self._model]})
        self.store = fixed_api.FilesAndBatches(self._answer_for)
        self.responses = 0

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        if scope["type"] != "http":
            return await not_http(scope, receive, send)
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/v1/models":
            return await _send(send, 200, self._models)
        if method == "GET" and path.startswith("/v1/models/"):
            found = path[len("/v1/models/"):] == self.model
            return await _send(send, *((200, orjson.dumps(self._model)) if found else fixed_api.not_found("model")))
        if method == "GET" and (answer := self.store.get(path)) is not None:
            return await _send(send, *answer)
        if method != "POST" or path not in ("/v1/chat/completions", "/v1/completions", "/v1/responses",
                                            "/v1/embeddings", "/v1/files", "/v1/batches"):
            return await _send(send, 404, orjson.dumps({"error": {"message": "not found", "type": "invalid_request_error",
                                                                  "code": "not_found", "param": None}}))
        body = await read_body(receive)
        if path == "/v1/files":
            headers = dict(scope["headers"])
            return await _send(send, *self.store.upload(body, headers.get(b"content-type", b"").decode("latin-1")))
        try:
            request = orjson.loads(body)
            assert isinstance(request, dict)
        except (orjson.JSONDecodeError, AssertionError):
            return await _send(send, 400, orjson.dumps({"error": {"message": "invalid JSON", "type": "invalid_request_error",
                                                                  "code": "invalid_json", "param": None}}))
        if path == "/v1/batches":
            return await _send(send, *self.store.create_batch(request))
        if path == "/v1/embeddings":
            self.requests += 1
            return await _send(send, *fixed_api.embeddings_answer(request, self.model))
        if path == "/v1/responses":
            return await self._responses(request, len(body) // 4, send)
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
        await _send(send, 200, orjson.dumps(self._answer_for(path, request, prompt_tokens, cid)))

    def _answer_for(self, endpoint: str, request: dict[str, Any], prompt_tokens: int | None = None,
                    cid: str | None = None) -> dict[str, Any]:
        """The non-streamed answer body of a chat or text completion (also each batch line's)."""
        chat = endpoint != "/v1/completions"
        if prompt_tokens is None:
            prompt_tokens = len(orjson.dumps(request)) // 4
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": self.completion_tokens,
                 "total_tokens": prompt_tokens + self.completion_tokens}
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": self.text}, "finish_reason": "stop"}
        else:
            choice = {"index": 0, "text": self.text, "finish_reason": "stop"}
        return {"id": cid or f"cmpl-b{prompt_tokens}", "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": request.get("model") or self.model, "choices": [choice],
                "usage": usage}

    async def _responses(self, request: dict[str, Any], input_tokens: int, send) -> None:
        self.requests += 1
        self.responses += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        rid = f"resp_{self.responses:08d}{int(time.time() * 1000) % 10**8:08d}"
        model = request.get("model") or self.model
        if request.get("stream") is True:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
            for event in fixed_api.response_stream(rid, model, self.text, request, self.chunks, input_tokens):
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await _send(send, 200, orjson.dumps(fixed_api.response_object(rid, model, self.text, request,
                                                                      input_tokens=input_tokens)))


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
