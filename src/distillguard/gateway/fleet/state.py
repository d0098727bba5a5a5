"""Shared online state on Redis: token buckets, the observation stream, operator state.

One Redis (Debian's ``redis-server``, no modules) holds what the replicas share:

* ``<prefix>:b:<scope>:<name>:<what>``: token buckets (hash: level, stamp, rate). A request's
  buckets are checked and charged by one Lua script (``EVALSHA``), atomically across replicas,
  on Redis's clock; the same script appends the request's observation to the stream, so the
  shared state costs one round trip per request.
* ``<prefix>:obs``: a stream (``XADD ... MAXLEN ~``) of observations (:mod:`.observation`) and
  operator changes. Each replica reads it in a background task (``XREAD BLOCK``) and folds the
  other replicas' entries into its own scorer: every replica scores an account on all of its
  traffic, hydra links included, a few milliseconds after the request (bounded by the read's
  100 ms block plus the fold; stated bound: 1 s).
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

log = logging.getLogger("distillguard.gateway.fleet")

# KEYS: stream, bucket keys...  ARGV: now ('' = Redis TIME), enforced (1/0), maxlen, origin, entry ('' = none),
# then per bucket: per_minute, cost, take. Returns {now, wait_1, ...} as strings (Lua numbers become integers).
ADMIT = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
local enforced = ARGV[2] == '1'
local n = #KEYS - 1
local lv, st, waits = {}, {}, {}
local blocked = false
for i = 1, n do
  local b = 5 + (i - 1) * 3
  local pm, cost = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local rate, cap = pm / 60.0, math.max(1.0, pm)
  local h = redis.call('HMGET', KEYS[i + 1], 'l', 's', 'pm')
  local level, stamp = cap, now
  if h[1] and tonumber(h[3]) == pm then level, stamp = tonumber(h[1]), tonumber(h[2]) end
  if now > stamp then level = math.min(cap, level + (now - stamp) * rate); stamp = now end
  local w = 0
  if level < cost and level < cap then
    if rate > 0 then w = (math.min(cost, cap) - level) / rate else w = 1e9 end
  end
  if w > 0 then blocked = true end
  lv[i], st[i], waits[i] = level, stamp, w
end
local out = {tostring(now)}
for i = 1, n do
  local b = 5 + (i - 1) * 3
  local pm, take = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 3])
  local level = lv[i]
  if take > 0 and (not enforced or not blocked) then level = level - take end
  local rate, cap = pm / 60.0, math.max(1.0, pm)
  redis.call('HSET', KEYS[i + 1], 'l', tostring(level), 's', tostring(st[i]), 'pm', ARGV[b + 1])
  redis.call('PEXPIRE', KEYS[i + 1], math.floor(((cap - level) / math.max(rate, 1e-9) + 60) * 1000))
  out[i + 1] = tostring(waits[i])
end
if ARGV[5] ~= '' then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'o', ARGV[4], 'd', ARGV[5])
end
return out
"""

# Charge answered tokens to the token buckets that exist. KEYS: buckets; ARGV: now ('' = TIME), tokens.
CHARGE = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
for i = 1, #KEYS do
  local h = redis.call('HMGET', KEYS[i], 'l', 's', 'pm')
  if h[1] then
    local pm = tonumber(h[3])
    local rate, cap = pm / 60.0, math.max(1.0, pm)
    local level, stamp = tonumber(h[1]), tonumber(h[2])
    if now > stamp then level = math.min(cap, level + (now - stamp) * rate); stamp = now end
    level = level - tonumber(ARGV[2])
    redis.call('HSET', KEYS[i], 'l', tostring(level), 's', tostring(stamp))
    redis.call('PEXPIRE', KEYS[i], math.floor(((cap - level) / math.max(rate, 1e-9) + 60) * 1000))
  end
end
return 1
"""


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
                 timeout_s: float = 2.0) -> None:
        self.url = check_url(url)
        self.replica = replica
        self.origin = f"{replica}.{secrets.token_hex(4)}"    # this incarnation: its own entries are skipped
        self.prefix = prefix
        self.stream = f"{prefix}:obs"
        self.admin_key = f"{prefix}:admin"
        self.maxlen = maxlen
        self.block_ms = block_ms
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
            batch = [self.outbox.popleft() for _ in range(min(500, len(self.outbox)))]
            pipe = self.redis.pipeline(transaction=False)
            for data in batch:
                pipe.xadd(self.stream, {"o": self.origin, "d": data}, maxlen=self.maxlen, approximate=True)
            try:
                await pipe.execute()
            except BaseException:
                self.outbox.extendleft(reversed(batch))
                raise
            self.counts["published"] += len(batch)

    async def _run(self) -> None:
        while not self._stopping:
            if not self.connected:
                await asyncio.sleep(self.retry_s)
                try:
                    await self._connect()
                except (RedisError, OSError) as exc:
                    self._down(exc)
                continue
            try:
                if self.outbox:
                    await self._flush()
                resp = await self._reader.xread({self.stream: self.cursor}, count=1000, block=self.block_ms)
            except (RedisError, OSError) as exc:
                self._down(exc)
                continue
            n = 0
            for _stream, entries in resp or ():
                for entry_id, fields in entries:
                    self.cursor = entry_id.decode()
                    self._handle(fields)
                    n += 1
                    if n % 64 == 0:
                        await asyncio.sleep(0)      # requests keep flowing while a backlog is folded
                if entries:
                    self.lag_s = max(0.0, time.time() - int(self.cursor.split("-")[0]) / 1000)

    def _handle(self, fields: dict[bytes, bytes]) -> None:
        if fields.get(b"o", b"").decode() == self.origin:
            return
        admin = fields.get(b"a")
        if admin is not None:
            try:
                field, value = _read_admin_entry(admin)
            except (ValueError, orjson.JSONDecodeError):
                self.counts["skipped_bad"] += 1
                return
            self._apply_admin(field, value)
            return
        try:
            obs = decode(fields.get(b"d", b""))
            self.on_observation(obs)
        except ObservationError:
            self.counts["skipped_bad"] += 1
            return
        except Exception:   # a bad record must not stop the fold
            log.exception("folding a fleet observation failed")
            self.counts["skipped_bad"] += 1
            return
        self.counts["folded"] += 1

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
        publish ``obs``, in one round trip. Returns (Redis's now, the wait of each bucket), or
        None when Redis is unavailable (the caller decides on local state; ``obs`` is buffered)."""
        data = encode(obs) if obs is not None else None
        if not self.connected:
            if data is not None:
                self._buffer(data)
            return None
        if not buckets and data is None:
            return 0.0, []
        args: list[Any] = ["" if now is None else repr(now), "1" if enforced else "0", self.maxlen, self.origin,
                           data or ""]
        for _key, per_minute, cost, take in buckets:
            args += [repr(float(per_minute)), repr(float(cost)), repr(float(take))]
        t0 = time.perf_counter()
        try:
            out = await self._admit(keys=[self.stream] + [self.bucket_key(b[0]) for b in buckets], args=args)
        except (RedisError, OSError) as exc:
            self._down(exc)
            if data is not None:
                self._buffer(data)
            return None
        self.rtt.append(time.perf_counter() - t0)
        if data is not None:
            self.counts["published"] += 1
        return float(out[0]), [float(w) for w in out[1:]]

    async def charge(self, keys: list[str], tokens: float, now: float | None = None) -> None:
        if not keys or not self.connected:
            return
        try:
            await self._charge(keys=[self.bucket_key(k) for k in keys], args=["" if now is None else repr(now), tokens])
        except (RedisError, OSError) as exc:
            self._down(exc)

    def publish(self, obs: Observation) -> None:
        """Queue an observation (e.g. an answer's output tokens); sent by the background task."""
        self._buffer(encode(obs))

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
