"""A lean HTTP/1.1 client for the gateway's upstream: keep-alive pool, timeouts, streaming.

httpx's connection pool does bookkeeping proportional to its size on every request, and its
layers (httpx → httpcore → anyio) cost about half a millisecond of CPU per proxied request,
more than everything else the gateway does. This client does only what a proxy to one upstream
needs: a pool of keep-alive connections to one ``http://host:port``, requests with a body,
responses parsed by ``httptools`` (the parser uvicorn uses; chunked and content-length bodies),
optional streaming of the body, connect and read timeouts. ``https`` upstreams use httpx
(:class:`HttpxUpstream`), which this client is tested against.

Errors are :class:`UpstreamError` subclasses: ``UpstreamUnavailable`` (connect failed or the
connection broke before a response), ``UpstreamTimeout``, ``UpstreamProtocolError`` (a malformed
response or one cut short).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator
from urllib.parse import urlparse

import httptools
import httpx


class UpstreamError(Exception):
    code = "upstream_unavailable"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    code = "upstream_timeout"


class UpstreamProtocolError(UpstreamError):
    code = "upstream_stream_cut"


@dataclass
class _Parsed:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    headers_done: bool = False
    complete: bool = False
    chunks: deque = field(default_factory=deque)
    keep_alive: bool = False
    parser: object = None

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(bytes(body))

    def on_message_complete(self) -> None:
        self.complete = True
        # The parser forgets the message's keep-alive state once it completes: read it now.
        self.keep_alive = self.parser.should_keep_alive()


class _Connection:
    __slots__ = ("reader", "writer", "reused")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.reused = reader, writer, False

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:
            pass


class UpstreamResponse:
    """Status and headers at once; the body read whole (``read``) or in pieces (``iter_raw``)."""

    def __init__(self, client: "UpstreamClient", conn: _Connection, parser, parsed: _Parsed) -> None:
        self.status_code = parsed.status
        self.headers = parsed.headers
        self._client, self._conn, self._parser, self._parsed = client, conn, parser, parsed
        self._done = False

    async def iter_raw(self) -> AsyncIterator[bytes]:
        parsed = self._parsed
        try:
            while True:
                while parsed.chunks:
                    yield parsed.chunks.popleft()
                if parsed.complete:
                    break
                data = await self._client._read(self._conn)
                if not data:
                    raise UpstreamProtocolError("the upstream closed the connection mid-response")
                try:
                    self._parser.feed_data(data)
                except httptools.HttpParserError as exc:
                    raise UpstreamProtocolError(f"malformed response from the upstream ({exc})") from None
        except BaseException:
            self._finish(reusable=False)
            raise
        self._finish(reusable=parsed.keep_alive)

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_raw()])

    def _finish(self, reusable: bool) -> None:
        if not self._done:
            self._done = True
            self._client._release(self._conn, reusable)

    async def aclose(self) -> None:
        self._finish(reusable=False)


class UpstreamClient:
    def __init__(self, base_url: str, *, max_connections: int = 512, connect_timeout: float = 5.0,
                 timeout: float = 120.0) -> None:
        url = urlparse(base_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"UpstreamClient speaks plain http only, got {base_url!r}")
        self.host, self.port = url.hostname, url.port or 80
        self.prefix = url.path.rstrip("/")
        self.host_header = url.netloc.encode("latin-1")
        self.connect_timeout, self.timeout = connect_timeout, timeout
        self._idle: deque[_Connection] = deque()
        self._slots = asyncio.Semaphore(max_connections)

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
        except TimeoutError:
            raise UpstreamTimeout(f"connecting to {self.host}:{self.port} timed out") from None
        except OSError as exc:
            raise UpstreamUnavailable(f"cannot connect to {self.host}:{self.port} ({exc.strerror or exc})") from None
        return _Connection(reader, writer)

    async def _read(self, conn: _Connection) -> bytes:
        try:
            async with asyncio.timeout(self.timeout):
                return await conn.reader.read(65536)
        except TimeoutError:
            raise UpstreamTimeout(f"the upstream sent nothing for {self.timeout:g} s") from None
        except OSError as exc:
            raise UpstreamProtocolError(f"connection to the upstream broke ({exc})") from None

    def _take_idle(self) -> _Connection | None:
        """The most recently used idle connection the upstream has not closed meanwhile."""
        while self._idle:
            conn = self._idle.pop()
            if conn.reader.at_eof() or conn.writer.is_closing():
                conn.close()
                continue
            return conn
        return None

    def _release(self, conn: _Connection, reusable: bool) -> None:
        if reusable and not conn.writer.is_closing():
            conn.reused = True
            self._idle.append(conn)
        else:
            conn.close()
        self._slots.release()

    async def send(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> UpstreamResponse:
        """Send a request; returns once the status line and headers are in."""
        await self._slots.acquire()
        try:
            head = [f"{method} {self.prefix}{path} HTTP/1.1\r\n".encode("latin-1"), b"host: ", self.host_header,
                    b"\r\ncontent-length: ", str(len(body)).encode(), b"\r\n"]
            for name, value in headers.items():
                head += [name.encode("latin-1"), b": ", value.encode("latin-1", "replace"), b"\r\n"]
            head.append(b"\r\n")
            payload = b"".join(head) + body
            for attempt in range(2):
                conn = self._take_idle() or await self._connect()
                try:
                    return await self._exchange(conn, payload)
                except _StaleConnection:
                    conn.close()             # the upstream closed an idle connection: retry on a new one
                    if attempt:
                        raise UpstreamUnavailable("the upstream closed the connection without answering") from None
            raise AssertionError("unreachable")
        except BaseException:
            self._slots.release()
            raise

    async def _exchange(self, conn: _Connection, payload: bytes) -> UpstreamResponse:
        parsed = _Parsed()
        parser = parsed.parser = httptools.HttpResponseParser(parsed)
        try:
            conn.writer.write(payload)
            while not parsed.headers_done:
                try:
                    data = await self._read(conn)
                except UpstreamProtocolError:
                    if conn.reused:          # reset on a connection the upstream had dropped
                        raise _StaleConnection() from None
                    raise UpstreamUnavailable("the upstream reset the connection without answering") from None
                if not data:
                    if conn.reused:
                        raise _StaleConnection()
                    raise UpstreamUnavailable("the upstream closed the connection without answering")
                try:
                    parser.feed_data(data)
                except httptools.HttpParserUpgrade:
                    raise UpstreamProtocolError("the upstream asked for a protocol upgrade") from None
                except httptools.HttpParserError as exc:
                    raise UpstreamProtocolError(f"malformed response from the upstream ({exc})") from None
                conn.reused = False          # bytes came back: no longer a stale-connection candidate
            parsed.status = parser.get_status_code()
        except (_StaleConnection, UpstreamError):
            conn.close()
            raise
        except ConnectionError as exc:
            conn.close()
            if conn.reused:
                raise _StaleConnection() from None
            raise UpstreamUnavailable(f"connection to the upstream broke ({exc})") from None
        except BaseException:
            conn.close()
            raise
        return UpstreamResponse(self, conn, parser, parsed)

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().close()


class _StaleConnection(Exception):
    pass


class HttpxUpstream:
    """The same interface over httpx (https upstreams, and the reference in tests)."""

    def __init__(self, base_url: str, *, max_connections: int = 512, connect_timeout: float = 5.0,
                 timeout: float = 120.0, transport: httpx.AsyncBaseTransport | None = None) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.base = base_url.rstrip("/")
        self.client = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(timeout, connect=connect_timeout),
                                        transport=transport)

    async def send(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> "_HttpxResponse":
        request = self.client.build_request(method, self.base + path, content=body, headers=headers)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"the upstream did not answer in time ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"cannot reach the upstream ({type(exc).__name__}: {exc})") from None
        return _HttpxResponse(response)

    async def aclose(self) -> None:
        await self.client.aclose()


class _HttpxResponse:
    def __init__(self, response: httpx.Response) -> None:
        self._r = response
        self.status_code = response.status_code
        self.headers = {k.lower(): v for k, v in response.headers.items()}

    async def iter_raw(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._r.aiter_raw():
                yield chunk
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"the upstream stopped sending ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise UpstreamProtocolError(f"the upstream's response broke off ({type(exc).__name__})") from None
        finally:
            await self._r.aclose()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_raw()])

    async def aclose(self) -> None:
        await self._r.aclose()


def make_upstream(base_url: str, *, max_connections: int, connect_timeout: float, timeout: float,
                  transport: httpx.AsyncBaseTransport | None = None):
    """Our client for plain http; httpx for https or when a test transport is given."""
    if transport is None and urlparse(base_url).scheme == "http":
        return UpstreamClient(base_url, max_connections=max_connections, connect_timeout=connect_timeout,
                              timeout=timeout)
    return HttpxUpstream(base_url, max_connections=max_connections, connect_timeout=connect_timeout,
                         timeout=timeout, transport=transport)
