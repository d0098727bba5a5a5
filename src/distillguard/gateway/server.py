"""Running the gateway (or the fixed upstream) under uvicorn, in the foreground or in a thread."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import uvicorn


def uvicorn_config(app: Any, host: str, port: int, *, log_level: str = "warning") -> uvicorn.Config:
    try:
        import uvloop  # noqa: F401
        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    try:
        import httptools  # noqa: F401
        http = "httptools"
    except ImportError:
        http = "h11"
    # proxy_headers off: uvicorn's default rewrites the client address from X-Forwarded-For for any
    # peer on 127.0.0.1, so a local client could pose as any IP (and dodge the dashboard's login
    # lock-out). The gateway reads the header itself, only from its configured trusted proxies
    # (:mod:`distillguard.gateway.clientaddr`).
    return uvicorn.Config(app, host=host, port=port, loop=loop, http=http, log_level=log_level, access_log=False,
                          lifespan="on", timeout_graceful_shutdown=10, backlog=4096, proxy_headers=False)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerThread:
    """A uvicorn server in a background thread (tests, benchmarks, the demo)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.server = uvicorn.Server(uvicorn_config(app, self.host, self.port))
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"uvicorn-{self.port}")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        asyncio.run(self.server.serve())

    def __enter__(self) -> "ServerThread":
        self.start()
        return self

    def start(self, timeout: float = 30.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __exit__(self, *exc: object) -> None:
        self.stop()
