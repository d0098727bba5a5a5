"""Shared online state on Redis: token buckets, the observation stream, operator state.

One Redis (Debian's ``redis-server``, no modules) holds what the replicas share:

* ``<prefix>:b:<scope>:<name>:<what>``: token buckets (hash: level, stamp, rate). A request's
  buckets are checked and charged by one Lua script (``EVALSHA``, :mod:`.scripts`), atomically
  across replicas, on Redis's clock; the same script appends the request's observation to the
  stream. The requests waiting on Redis at one moment share the call (one round trip for all
  of them, admitted in order, as the log's group commit shares one fsync); the answers' output
  tokens go the same way (at once when no call is on the wire, else with the next).
* ``<prefix>:obs``: a stream (``XADD ... MAXLEN ~``) of observation batches (newline-separated
  records, :mod:`.observation`) and operator changes. Each replica reads it in a background
  task (``XREAD BLOCK``) and folds the other replicas' records into its own scorer: every
  replica scores an account on all of its traffic, hydra links included, a few milliseconds
  after the request (bounded by the read's 100 ms block plus the fold; stated bound: 1 s).
  ``read_every_s`` > 0 spaces the reads (one call for what arrived meanwhile); off by default:
  10 ms delayed the fold enough to flag some accounts later in the fast replay of eval_fleet.
* ``<prefix>:admin``: operator state (manual actions, allowlist, API keys added at runtime,
  refusals) as a hash, the authority a replica reloads at start and after every reconnection;
  each change also goes through the stream so the others apply it at once.

When Redis is unreachable (or restarted) each replica goes on with its local state (local
buckets, its own observations), says so (``status()``), buffers what it would have published
(bounded), and resyncs when Redis returns: the admin hash is reloaded (fields changed during the
outage are pushed first: the operator's latest word wins), buffered observations are published,
and after a restart (a new Redis ``run_id``) the stream is read from its start. The durable log,
not Redis, is the record of what was answered.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from distillguard.errors import BadInputError
from distillguard.gateway.fleet.observation import Observation, ObservationError, decode, encode
from distillguard.gateway.fleet.scripts import ADMIT, CHARGE

log = logging.getLogger("distillguard.gateway.fleet")
MAX_BATCH = 256          # requests admitted by one script call
MAX_RIDERS = 512         # buffered records (answers' output tokens) carried by one call
READ_EVERY_S = 0.0       # > 0: the stream is read at most this often (what arrived meanwhile, in one call)


def redact(url: str) -> str:
    """The URL without its password (for status pages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise BadInputError(f"--state must be a redis://, rediss:// or unix:// URL, not {redact(url)!r}",
                            field="state")
    return url


class SharedState:
    """One replica's connection to the fleet's shared state (see the module docstring)."""

    def __init__(self, url: str, *, replica: str, prefix: str = "dg", maxlen: int = 200_000,
                 block_ms: int = 100, retry_s: float = 0.5, buffer: int = 100_000,
                 timeout_s: float = 2.0, read_every_s: float = READ_EVERY_S) -> None:
        self.url = check_url(url)
        self.replica = replica
        self.origin = f"{replica}.{secrets.token_hex(4)}"    # this incarnation: its own entries are skipped
        self._origin_b = self.origin.encode()
        self.prefix = prefix
        self.stream = f"{prefix}:obs"
        self.admin_key = f"{prefix}:admin"
        self.maxlen = maxlen
        self.block_ms = block_ms
        self.read_every_s = read_every_s
        self.retry_s = retry_s
        self.timeout_s = timeout_s
        self.redis: aioredis.Redis | None = None
        self._reader: aioredis.Redis | None = None
        self.connected = False
        self.down_since: float | None = time.time()
        self.last_error: str | None = None
        self.run_id: str | None = None
        self.cursor = "0-0"          # last stream id folded
        self.outbox: deque[bytes] = deque()
        self.buffer = buffer
        self.dirty: dict[str, bytes | None] = {}   # admin fields changed while Redis was away
        self.known: dict[str, bytes] = {}          # the admin fields this replica holds (its mirror)
        self.counts = {"published": 0, "folded": 0, "skipped_bad": 0, "dropped": 0, "reconnects": 0,
                       "resets": 0, "admin_applied": 0}
        self.lag_s = 0.0             # age of the last folded entry when folded
        self.rtt: deque[float] = deque(maxlen=4096)   # admit round trips (s)
        # Set by the gateway:
        self.on_observation: Callable[[Observation], None] = lambda obs: None
        self.on_admin: Callable[[str, str, Any], None] = lambda kind, name, value: None
        self.on_mode: Callable[[bool], None] = lambda shared: None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._pending: list[tuple[list, bool, float | None, bytes | None, asyncio.Future, float]] = []
        self._sender: asyncio.Task | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self, wait_s: float = 2.0) -> None:
        """Connect (waiting up to ``wait_s``; unreachable: start in local mode and keep trying)."""
        kw = dict(socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s, health_check_interval=0)
        self.redis = aioredis.Redis.from_url(self.url, **kw)
        self._reader = aioredis.Redis.from_url(self.url, socket_timeout=self.timeout_s + self.block_ms / 1000,
                                               socket_connect_timeout=self.timeout_s)
        self._admit = self.redis.register_script(ADMIT)
        self._charge = self.redis.register_script(CHARGE)
        try:
            await asyncio.wait_for(self._connect(), wait_s)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._down(exc)
        self._task = asyncio.create_task(self._run(), name=f"fleet-state-{self.replica}")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._sender is not None:          # the call on the wire and what waits behind it
            try:
                await asyncio.wait_for(asyncio.shield(self._sender), self.timeout_s * 2)
            except (asyncio.TimeoutError, Exception):
                pass
        if self.connected:
            try:
                await self._flush()
            except (RedisError, OSError):
                pass
        for client in (self.redis, self._reader):
            if client is not None:
                await client.aclose()

    # -- connection and resync ---------------------------------------------------------------
    def _down(self, exc: BaseException) -> None:
        if self.connected:
            log.warning("shared state at %s unreachable (%s): local state until it returns", redact(self.url), exc)
            self.down_since = time.time()
        self.connected = False
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.on_mode(False)

    async def _connect(self) -> None:
        r = self.redis
        info = await r.info("server")
        run_id = info.get("run_id")
        restarted = self.run_id is not None and run_id != self.run_id
        if restarted:
            self.cursor = "0-0"             # a restarted Redis: its stream starts afresh
            self.counts["resets"] += 1
        self.run_id = run_id
        snapshot = {f.decode(): v for f, v in (await r.hgetall(self.admin_key)).items()}
        if restarted and not snapshot and self.known:
            # Redis came back empty (no persistence): this replica's mirror re-seeds it.
            self.dirty = {**self.known, **self.dirty}
        # Operator changes made here while Redis was away are the latest word: push them first.
        if self.dirty:
            pipe = r.pipeline(transaction=True)
            for field, value in self.dirty.items():
                if value is None:
                    pipe.hdel(self.admin_key, field)
                    snapshot.pop(field, None)
                else:
                    pipe.hset(self.admin_key, field, value)
                    snapshot[field] = value
                pipe.xadd(self.stream, {"o": self.origin, "a": _admin_entry(field, value)},
                          maxlen=self.maxlen, approximate=True)
            await pipe.execute()
            self.dirty.clear()
        for field in [f for f in self.known if f not in snapshot]:
            self._apply_admin(field, None)          # removed by another replica meanwhile
        for field, value in snapshot.items():
            if self.known.get(field) != value:
                self._apply_admin(field, value)
        if self.cursor != "0-0":
            last = await r.xrevrange(self.stream, count=1)
            if not last or _id_lt(last[0][0].decode(), self.cursor):
                self.cursor = "0-0"
        await self._flush()
        if not self.connected:
            if self.down_since is not None and self.counts["published"] + self.counts["folded"] > 0:
                self.counts["reconnects"] += 1
            log.info("shared state at %s connected (replica %s)", redact(self.url), self.replica)
        self.connected = True
        self.down_since = None
        self.last_error = None
        self.on_mode(True)

    async def _flush(self) -> None:
        """Publish what was buffered (observations while Redis was away, output tokens)."""
        while self.outbox:
            batch = [self.outbox.popleft() for _ in range(min(MAX_RIDERS, len(self.outbox)))]
            try:
                await self.redis.xadd(self.stream, {"o": self.origin, "b": b"\n".join(batch)}, maxlen=self.maxlen,
                                      approximate=True)
            except BaseException:
                self.outbox.extendleft(reversed(batch))
                raise
            self.counts["published"] += len(batch)

    async def _run(self) -> None:
        read_at = 0.0
        while not self._stopping:
            if not self.connected:
                await asyncio.sleep(self.retry_s)
                try:
                    await self._connect()
                except (RedisError, OSError) as exc:
                    self._down(exc)
                continue
            if self.read_every_s > 0 and time.monotonic() - read_at < self.read_every_s:
                # Entries arrive one per call of a busy replica; reading them a few at a time
                # costs one round trip for many (the fold waits this much longer, at most).
                await asyncio.sleep(self.read_every_s - (time.monotonic() - read_at))
            read_at = time.monotonic()
            try:
                resp = await self._reader.xread({self.stream: self.cursor}, count=200, block=self.block_ms)
            except (RedisError, OSError) as exc:
                self._down(exc)
                continue
            n = 0
            for _stream, entries in resp or ():
                for entry_id, fields in entries:
                    self.cursor = entry_id.decode()
                    n += self._handle(fields)
                    if n >= 64:
                        n = 0
                        await asyncio.sleep(0)      # requests keep flowing while a backlog is folded
                if entries:
                    self.lag_s = max(0.0, time.time() - int(self.cursor.split("-")[0]) / 1000)

    def _handle(self, fields: dict[bytes, bytes]) -> int:
        """Fold one stream entry (another replica's batch of observations, or an operator change);
        returns the number of records it held."""
        if fields.get(b"o") == self._origin_b:
            return 1
        admin = fields.get(b"a")
        if admin is not None:
            try:
                field, value = _read_admin_entry(admin)
            except (ValueError, orjson.JSONDecodeError):
                self.counts["skipped_bad"] += 1
                return 1
            self._apply_admin(field, value)
            return 1
        batch = fields.get(b"b")
        records = batch.split(b"\n") if batch is not None else [fields.get(b"d", b"")]
        for raw in records:
            try:
                self.on_observation(decode(raw))
            except ObservationError:
                self.counts["skipped_bad"] += 1
                continue
            except Exception:   # a bad record must not stop the fold
                log.exception("folding a fleet observation failed")
                self.counts["skipped_bad"] += 1
                continue
            self.counts["folded"] += 1
        return len(records)

    def _apply_admin(self, field: str, value: bytes | None) -> None:
        if value is None:
            self.known.pop(field, None)
        else:
            self.known[field] = value
        kind, _, name = field.partition(":")
        try:
            data = None if value is None else orjson.loads(value)
        except orjson.JSONDecodeError:
            self.counts["skipped_bad"] += 1
            return
        try:
            self.on_admin(kind, name, data)
        except Exception:
            log.exception("applying a fleet admin change %s failed", field)
            self.counts["skipped_bad"] += 1
            return
        self.counts["admin_applied"] += 1

    # -- per request ---------------------------------------------------------------------------
    async def admit(self, buckets: list[tuple[str, float, float, float]], enforced: bool,
                    obs: Observation | None, now: float | None = None) -> tuple[float, list[float]] | None:
        """Check and charge ``buckets`` ((key, per_minute, cost, take) each) atomically, and
        publish ``obs``, in one round trip shared with every request waiting on Redis at that
        moment (:meth:`_send`). Returns (Redis's now, the wait of each bucket), or None when Redis
        is unavailable (the caller decides on local state; ``obs`` is buffered)."""
        data = encode(obs) if obs is not None else None
        if not self.connected:
            if data is not None:
                self._buffer(data)
            return None
        if not buckets and data is None:
            return 0.0, []
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((buckets, enforced, now, data, fut, time.perf_counter()))
        self._kick()
        return await fut

    def _kick(self) -> None:
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        """Send what waits (requests' admissions and observations, buffered records), one script
        call at a time: requests arriving while a call is on the wire go together in the next."""
        batch: list = []
        riders: list[bytes] = []
        try:
            while (self._pending or self.outbox) and self.connected:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                riders = [self.outbox.popleft() for _ in range(min(MAX_RIDERS, len(self.outbox)))]
                records = riders + [item[3] for item in batch if item[3] is not None]
                keys = [self.stream]
                args: list[Any] = [self.maxlen, self.origin, b"\n".join(records), len(batch)]
                for buckets, enforced, now, _data, _fut, _t in batch:
                    args += ["" if now is None else repr(now), "1" if enforced else "0", len(buckets)]
                    for key, per_minute, cost, take in buckets:
                        keys.append(self.bucket_key(key))
                        args += [repr(float(per_minute)), repr(float(cost)), repr(float(take))]
                try:
                    out = await self._admit(keys=keys, args=args)
                except (RedisError, OSError) as exc:
                    self._down(exc)
                    self._fail(batch, riders)
                    batch, riders = [], []
                    break
                self.counts["published"] += len(records)
                done = time.perf_counter()
                i = 0
                for buckets, _enforced, _now, _data, fut, t in batch:
                    n = len(buckets)
                    if not fut.done():
                        fut.set_result((float(out[i]), [float(w) for w in out[i + 1:i + 1 + n]]))
                    self.rtt.append(done - t)
                    i += 1 + n
                batch, riders = [], []
        finally:
            self._sender = None
            self._fail(batch, riders)              # cancelled mid-call: nothing is left waiting
            if self._pending and not self.connected:
                self._fail(self._pending, [])
                self._pending = []

    def _fail(self, batch: list, riders: list[bytes]) -> None:
        """Requests whose call failed: answered on local state, their observations buffered."""
        self.outbox.extendleft(reversed(riders))
        for _buckets, _enforced, _now, data, fut, _t in batch:
            if data is not None:
                self._buffer(data)
            if not fut.done():
                fut.set_result(None)

    async def charge(self, keys: list[str], tokens: float, now: float | None = None) -> None:
        if not keys or not self.connected:
            return
        try:
            await self._charge(keys=[self.bucket_key(k) for k in keys], args=["" if now is None else repr(now), tokens])
        except (RedisError, OSError) as exc:
            self._down(exc)

    def publish(self, obs: Observation) -> None:
        """Queue an observation (e.g. an answer's output tokens): sent at once when no call is on
        the wire, else with the next call (with the requests waiting behind the current one)."""
        self._buffer(encode(obs))
        if self.connected:
            self._kick()

    def _buffer(self, data: bytes) -> None:
        if len(self.outbox) >= self.buffer:
            self.outbox.popleft()
            self.counts["dropped"] += 1
        self.outbox.append(data)

    def bucket_key(self, name: str) -> str:
        return f"{self.prefix}:b:{name}"

    # -- operator state --------------------------------------------------------------------------
    async def set_admin(self, kind: str, name: str, value: Any) -> None:
        """Record an operator change (``value`` None removes it) for every replica; the caller
        has applied it locally already. Redis away: kept and pushed when it returns."""
        field = f"{kind}:{name}"
        data = None if value is None else orjson.dumps(value)
        if data is None:
            self.known.pop(field, None)
        else:
            self.known[field] = data
        if not self.connected:
            self.dirty[field] = data
            return
        pipe = self.redis.pipeline(transaction=True)
        if data is None:
            pipe.hdel(self.admin_key, field)
        else:
            pipe.hset(self.admin_key, field, data)
        pipe.xadd(self.stream, {"o": self.origin, "a": _admin_entry(field, data)}, maxlen=self.maxlen,
                  approximate=True)
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            self._down(exc)
            self.dirty[field] = data

    # -- status ------------------------------------------------------------------------------------
    def rtt_ms(self) -> dict[str, float | None]:
        values = sorted(self.rtt)
        if not values:
            return {"p50": None, "p99": None}
        return {"p50": round(values[len(values) // 2] * 1000, 3),
                "p99": round(values[min(len(values) - 1, int(len(values) * 0.99))] * 1000, 3)}

    def status(self) -> dict[str, Any]:
        return {"backend": "redis", "url": redact(self.url), "replica": self.replica, "origin": self.origin,
                "mode": "shared" if self.connected else "local", "connected": self.connected,
                "down_since": self.down_since, "last_error": self.last_error, "cursor": self.cursor,
                "lag_s": round(self.lag_s, 4), "buffered": len(self.outbox), "admin_pending": len(self.dirty),
                "round_trip_ms": self.rtt_ms(), **self.counts}


def _admin_entry(field: str, value: bytes | None) -> bytes:
    return orjson.dumps({"f": field, "v": None if value is None else value.decode()})


def _read_admin_entry(raw: bytes) -> tuple[str, bytes | None]:
    data = orjson.loads(raw)
    if not isinstance(data, dict) or not isinstance(data.get("f"), str):
        raise ValueError("not an admin entry")
    value = data.get("v")
    if value is not None and not isinstance(value, str):
        raise ValueError("admin value must be a string")
    return data["f"], None if value is None else value.encode()


def _id_lt(a: str, b: str) -> bool:
    ma, _, sa = a.partition("-")
    mb, _, sb = b.partition("-")
    return (int(ma), int(sa or 0)) < (int(mb), int(sb or 0))
