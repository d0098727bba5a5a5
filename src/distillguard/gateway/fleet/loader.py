"""One store from many logs: a Redis lease picks the one loader that moves every replica's log.

Each replica writes its own fsynced log in its own directory, ``<log root>/<replica>/`` (the
durability story is the single gateway's: an answered request is on disk first). Whichever
replica holds the lease ``<prefix>:loader`` (``SET NX PX``, renewed every third of its TTL by a
script that extends it only for its holder) runs a :class:`~distillguard.gateway.sinks.Loader`
over every replica directory under the root, each with that directory's own checkpoint, and is
the only process with the DuckDB store open (DuckDB's file lock makes that hard, not a
convention). On losing the lease (expired, Redis restarted, process killed) it closes the
store; the next holder re-reads the checkpoints. A slice loaded but not yet checkpointed when
a holder dies is sent again by the next one, and the store's anti-join on event id absorbs it:
every answered exchange lands in the store exactly once.

While Redis is unreachable nobody can take the lease: a holder keeps loading until its lease
would have expired, then stops; the logs keep growing (``unloaded_bytes``) and nothing is lost.
Replicas on several machines share the log root on shared storage, or use the Parquet sink
(each replica writes its own files; no lease needed).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

import redis
from redis.exceptions import RedisError

from distillguard.gateway.sinks import Loader, Sink
from distillguard.gateway.wal import list_segments

log = logging.getLogger("distillguard.gateway.fleet")

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def replica_dirs(root: Path) -> list[Path]:
    """Directories under ``root`` that hold a log (a segment or a checkpoint)."""
    if not root.is_dir():
        return []
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if (d / "checkpoint.json").exists() or list_segments(d):
            out.append(d)
    return out


def _newest_segment(directory: Path) -> int:
    segments = list_segments(directory)
    return segments[-1][0] if segments else 0


class FleetLoader:
    """The lease and the loading, in a background thread (the sync ``redis`` client)."""

    def __init__(self, root: str | Path, open_sink: Callable[[], Sink], url: str, *, holder: str,
                 prefix: str = "dg", ttl_s: float = 6.0, interval_s: float = 1.0, keep_segments: bool = False) -> None:
        self.root = Path(root)
        self.open_sink = open_sink
        self.holder = holder
        self.key = f"{prefix}:loader"
        self.ttl_ms = int(ttl_s * 1000)
        self.interval_s = interval_s
        self.keep_segments = keep_segments
        self.redis = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)
        self.sink: Sink | None = None
        self.loaders: dict[Path, Loader] = {}
        self.valid_until = 0.0        # monotonic time until which this holder's lease surely stands
        self.loaded = 0
        self.inserted = 0
        self.torn = 0
        self.acquired = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def holding(self) -> bool:
        return self.sink is not None and time.monotonic() < self.valid_until

    def _claim(self) -> bool:
        """Take or renew the lease; True while this process holds it."""
        t0 = time.monotonic()
        try:
            if self.sink is not None:
                ok = bool(self._renew(keys=[self.key], args=[self.holder, self.ttl_ms]))
            else:
                ok = bool(self.redis.set(self.key, self.holder, nx=True, px=self.ttl_ms))
        except (RedisError, OSError) as exc:
            self.error = f"lease: {type(exc).__name__}: {exc}"
            return self.holding        # Redis away: the lease stands until it would have expired
        if ok:
            self.valid_until = t0 + self.ttl_ms / 1000 * 0.9
        return ok

    def _open(self) -> None:
        self.sink = self.open_sink()
        self.acquired += 1
        # Positions as the last holder left them (another process may have loaded since).
        self.loaders = {}
        log.info("%s holds the loader lease", self.holder)

    def _close(self) -> None:
        if self.sink is not None:
            try:
                self.sink.close()
            finally:
                self.sink = None
                self.loaders = {}

    def load_once(self) -> int:
        """Load every replica's complete records now, if this process holds the lease."""
        with self._lock:
            if not self._claim():
                self._close()
                return 0
            if self.sink is None:
                try:
                    self._open()
                except Exception as exc:   # e.g. the previous holder still has the store open
                    self.error = f"store: {type(exc).__name__}: {exc}"
                    self._release(keys=[self.key], args=[self.holder])
                    self.valid_until = 0.0
                    return 0
            before = self.loaded
            for directory in replica_dirs(self.root):
                if not self.holding:
                    break
                loader = self.loaders.get(directory)
                if loader is None:
                    loader = self.loaders[directory] = Loader(
                        directory, self.sink, current_segment=lambda d=directory: _newest_segment(d),
                        keep_segments=self.keep_segments)
                n_before, i_before, t_before = loader.loaded, loader.inserted, loader.torn
                loader.load_once()
                self.loaded += loader.loaded - n_before
                self.inserted += loader.inserted - i_before
                self.torn += loader.torn - t_before
            self.error = None
            return self.loaded - before

    def pending_bytes(self) -> int:
        total = 0
        for directory in replica_dirs(self.root):
            total += Loader(directory, _NoSink()).pending_bytes()
        return total

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="distillguard-fleet-loader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.load_once()
            except Exception as exc:  # keep serving; status shows it
                self.error = f"{type(exc).__name__}: {exc}"

    def stop(self, final_load: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        if final_load:
            try:
                self.load_once()
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._close()
            try:
                self._release(keys=[self.key], args=[self.holder])
            except (RedisError, OSError):
                pass
        self.redis.close()

    def status(self) -> dict[str, Any]:
        return {"mode": "lease", "holder": self.holder, "holding": self.holding, "lease_key": self.key,
                "acquired": self.acquired, "loaded": self.loaded, "inserted": self.inserted, "torn": self.torn,
                "error": self.error}


class _NoSink:
    name = "none"

    def write(self, records: list[bytes], origin: str) -> int:
        return 0

    def close(self) -> None:
        pass
