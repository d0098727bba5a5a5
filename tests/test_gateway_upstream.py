"""Our upstream HTTP client against httpx (the reference) on real loopback servers."""

from __future__ import annotations

import asyncio
import re
import socket
import threading

import pytest

from distillguard.gateway.server import ServerThread, free_port
from distillguard.gateway.upstream import (HttpxUpstream, UpstreamClient, UpstreamProtocolError, UpstreamTimeout,
                                           UpstreamUnavailable)
from gateway_support import FaultyUpstream

BODY = b'{"model": "%s", "messages": [{"role": "user", "content": "hello"}]%s}'


def _stable(body: bytes) -> bytes:
    """The body without what differs between two calls (completion id, creation time)."""
    return re.sub(rb'"created":\d+', b"", re.sub(rb'"id":"cmpl-\d+"', b"", body))


@pytest.fixture(scope="module")
def upstream():
    with ServerThread(FaultyUpstream()) as server:
        yield server


async def _call(client, model: str, stream: bool = False):
    body = BODY % (model.encode(), b', "stream": true' if stream else b"")
    response = await client.send("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    chunks = [chunk async for chunk in response.iter_raw()]
    return response.status_code, response.headers.get("content-type"), b"".join(chunks), len(chunks)


@pytest.mark.parametrize("model, stream", [("ok", False), ("ok", True), ("fail-500", False),
                                           ("fail-503-json", False), ("malformed", False), ("slow-stream", True)])
def test_same_answers_as_httpx(upstream, model, stream):
    async def both():
        ours, ref = UpstreamClient(upstream.url), HttpxUpstream(upstream.url)
        try:
            return await _call(ours, model, stream), await _call(ref, model, stream)
        finally:
            await ours.aclose()
            await ref.aclose()
    ours, ref = asyncio.run(both())
    assert ours[:2] == ref[:2] and _stable(ours[2]) == _stable(ref[2])
    if model == "slow-stream":
        assert ours[3] >= 4          # delivered as the upstream sent it, not all at the end


def test_connections_are_kept_alive_and_reused(upstream):
    async def run():
        client = UpstreamClient(upstream.url)
        connects = 0
        original = client._connect

        async def counting():
            nonlocal connects
            connects += 1
            return await original()
        client._connect = counting
        for _ in range(5):
            results = await asyncio.gather(*(_call(client, "ok") for _ in range(16)))
            assert all(r[0] == 200 for r in results)
        await client.aclose()
        return connects
    assert asyncio.run(run()) == 16


def test_refused_timeout_and_cut_stream(upstream):
    async def run():
        down = UpstreamClient(f"http://127.0.0.1:{free_port()}")
        with pytest.raises(UpstreamUnavailable):
            await _call(down, "ok")
        slow = UpstreamClient(upstream.url, timeout=0.3)
        with pytest.raises(UpstreamTimeout):
            await _call(slow, "slow")
        cut = UpstreamClient(upstream.url)
        with pytest.raises(UpstreamProtocolError):
            await _call(cut, "cut-stream", stream=True)
        # A broken exchange gives its connection slot back.
        assert (await _call(cut, "ok"))[0] == 200
        for c in (down, slow, cut):
            await c.aclose()
    asyncio.run(run())


def test_a_connection_the_upstream_dropped_while_idle_is_retried():
    """A raw server that answers one request per connection, then closes it without a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"

    def serve():
        for _ in range(4):
            conn, _ = listener.accept()
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            conn.sendall(answer)
            conn.close()            # keep-alive was implied; the server drops it anyway
    threading.Thread(target=serve, daemon=True).start()

    async def run():
        client = UpstreamClient(f"http://127.0.0.1:{port}")
        statuses = []
        for _ in range(3):
            statuses.append((await _call(client, "ok"))[0])
            await asyncio.sleep(0.05)
        await client.aclose()
        return statuses
    try:
        assert asyncio.run(run()) == [200, 200, 200]
    finally:
        listener.close()


def test_only_plain_http():
    with pytest.raises(ValueError):
        UpstreamClient("https://example.com")
