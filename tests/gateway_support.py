"""Real servers on loopback for the gateway tests: a fault-injecting upstream and a gateway.

The upstream picks its behaviour from the request's ``model`` field, so one server can be
healthy, slow, failing, malformed or cut off mid-stream per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

import orjson

from distillguard.gateway.app import Gateway, build_app
from distillguard.gateway.config import load_config
from distillguard.gateway.server import ServerThread, free_port
from distillguard.serve.fixed import FixedCompletionServer, read_body

KEYS = {"sk-alice-0001": "alice", "sk-bob-00002": {"account": "bob", "email": "bob@example.com"},
        "sk-research-3": "research-lab"}
ADMIN = "admin-secret-token"


class FaultyUpstream(FixedCompletionServer):
    """``model``: ``ok`` | ``slow`` (sleeps 3 s) | ``fail-500`` | ``fail-503-json`` | ``malformed`` |
    ``cut-stream`` (two chunks, then the connection drops) | ``slow-stream`` (a chunk every 0.3 s) |
    ``reasoning`` (adds reasoning_content)."""

    def __init__(self) -> None:
        super().__init__(chunks=6)
        self.seen: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await super().__call__(scope, receive, send)
        body = await read_body(receive)
        request = orjson.loads(body)
        self.seen.append(request)
        self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        model = request.get("model", "ok")
        if model == "slow":
            await asyncio.sleep(3.0)
        if model == "fail-500":
            return await _raw(send, 500, b"Internal Server Error", b"text/plain")
        if model == "fail-503-json":
            return await _raw(send, 503, orjson.dumps({"error": {"message": "model overloaded", "type": "server_error"}}))
        if model == "malformed":
            return await _raw(send, 200, b'{"choices": [ {"message": ')
        if model == "cut-stream":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            for piece in ("Hello", " wor"):
                chunk = {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                            "more_body": True})
            raise RuntimeError("upstream dies mid-stream")   # uvicorn drops the connection
        if model == "slow-stream":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            for i in range(4):
                chunk = {"choices": [{"index": 0, "delta": {"content": f"part{i} "}, "finish_reason": None}]}
                await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                            "more_body": True})
                await asyncio.sleep(0.3)
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            return
        if model == "reasoning" and not request.get("stream"):
            answer = {"id": "x", "object": "chat.completion", "model": model,
                      "choices": [{"index": 0, "finish_reason": "stop",
                                   "message": {"role": "assistant", "content": "42",
                                               "reasoning_content": "secret chain of thought"}}],
                      "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
            return await _raw(send, 200, orjson.dumps(answer))

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}
        return await super().__call__(scope, replay, send)


async def _raw(send, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def write_keys(directory: Path) -> Path:
    path = directory / "keys.json"
    path.write_bytes(orjson.dumps(KEYS))
    return path


@contextlib.contextmanager
def running_gateway(tmp_path: Path, upstream_url: str, *, config_text: str | None = None,
                    **overrides: Any) -> Iterator[tuple[Gateway, str]]:
    """A gateway (real uvicorn, loopback) in front of ``upstream_url``; yields (gateway, base URL)."""
    config_path = None
    if config_text is not None:
        config_path = tmp_path / "gateway.toml"
        config_path.write_text(config_text)
    log_dir = overrides.pop("log_dir", tmp_path / "log")
    cfg = load_config(config_path, upstream=upstream_url, db=overrides.pop("db", tmp_path / "events.duckdb"),
                      keys=overrides.pop("keys", write_keys(tmp_path)), admin_token=overrides.pop("admin_token", ADMIN),
                      **overrides)
    cfg.log.dir = log_dir
    cfg.log.load_interval_s = 0.2
    gw = Gateway(cfg)
    server = ServerThread(build_app(gw), port=free_port())
    server.start()
    try:
        yield gw, server.url
    finally:
        server.stop()


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "1m") -> Iterator[Path]:
    """``path`` as a small tmpfs (a disk that fills up); skips the test without root."""
    import pytest

    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_to(directory: Path, leave: int) -> Path:
    """Fill ``directory``'s file system up to ``leave`` bytes free; returns the filler file."""
    st = os.statvfs(directory)
    filler = directory / "filler"
    filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler
