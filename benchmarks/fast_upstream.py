"""A model server as cheap as it can be, for benchmarks where the gateway must be the bottleneck.

``distillguard serve`` is a full ASGI app on uvicorn: on a 2-core machine its own CPU per request
(with wrk's) takes a share of the cores the gateway is measured on. This one is a bare asyncio
protocol: HTTP/1.1 keep-alive, a fixed chat completion (with usage) after ``--delay-ms``, any POST
path; ``GET /v1/models`` for readiness. Not a product: it trusts its client (wrk, the gateway).

    python benchmarks/fast_upstream.py --port 8001 --delay-ms 100
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import orjson

TEXT = ("Paris is the capital of France. It lies on the Seine and has been the country's political "
        "and cultural centre for centuries.")


def _response(body: bytes, status: bytes = b"200 OK") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\nx-request-id: fast-upstream\r\n\r\n" + body)


COMPLETION = _response(orjson.dumps({
    "id": "cmpl-fast", "object": "chat.completion", "created": 0, "model": "fixed-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 30, "completion_tokens": len(TEXT.split()),
              "total_tokens": 30 + len(TEXT.split())}}))
MODELS = _response(orjson.dumps({"object": "list", "data": [{"id": "fixed-model", "object": "model", "created": 0,
                                                             "owned_by": "distillguard"}]}))


class Upstream(asyncio.Protocol):
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        loop = asyncio.get_running_loop()
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.startswith(b"content-length:"):
                    length = int(line[15:])
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length:]
            answer = MODELS if head.startswith(b"get ") else COMPLETION
            if answer is MODELS or not self.delay_s:
                self._send(answer)
            else:
                loop.call_later(self.delay_s, self._send, answer)

    def _send(self, answer: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(answer)

    def connection_lost(self, exc) -> None:
        self.transport = None


async def main(host: str, port: int, delay_ms: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Upstream(delay_ms / 1000.0), host, port, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port, args.delay_ms))
