"""One store from many logs, exactly once: replicas' logs, loaders contending for the lease,
SIGKILL of the lease holder and of a replica, and a Redis restart, with a real redis-server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from distillguard.gateway.fleet.loader import FleetLoader, replica_dirs
from distillguard.gateway.sinks import DuckDBSink
from distillguard.store import EventStore
from redis_support import redis_server  # noqa: F401  (fixture)

HERE = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "fleet_support.py"), *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _store_ids(db: Path) -> list[str]:
    with EventStore(db) as store:
        return [row[0] for row in store.run("SELECT id FROM events")]


def test_only_the_lease_holder_loads(redis_server, tmp_path, make_event):
    from distillguard.gateway.wal import DurableLog
    root = tmp_path / "logs"
    for name in ("r1", "r2"):
        log = DurableLog(root / name)
        for i in range(5):
            log.append_nowait(__import__("orjson").dumps(make_event(i, id=f"{name}-{i}")))
        log.flush()
        log.close()
    assert [d.name for d in replica_dirs(root)] == ["r1", "r2"]
    db = tmp_path / "store.duckdb"
    a = FleetLoader(root, lambda: DuckDBSink(db), redis_server.url, holder="a")
    b = FleetLoader(root, lambda: DuckDBSink(db), redis_server.url, holder="b")
    assert a.load_once() == 10 and a.holding
    assert b.load_once() == 0 and not b.holding and b.sink is None
    a.stop(final_load=False)                  # releases the lease and closes the store
    assert b.load_once() == 0 and b.holding   # b takes over; nothing new to load
    b.stop(final_load=False)
    assert sorted(_store_ids(db)) == sorted(f"r{r}-{i}" for r in (1, 2) for i in range(5))


@pytest.mark.slow
def test_exactly_once_through_sigkills_and_a_redis_restart(redis_server, tmp_path):
    root, db = tmp_path / "logs", tmp_path / "store.duckdb"
    writers = [_spawn("writer", str(root / f"replica-{i}"), "1500", "25", "0.04") for i in range(3)]
    loaders = {name: _spawn("loader", str(root), str(db), redis_server.url, name, "30") for name in ("A", "B")}
    r = redis.Redis.from_url(redis_server.url)
    deadline = time.monotonic() + 20
    holder = None
    while holder is None and time.monotonic() < deadline:
        holder = r.get("dg:loader")
        time.sleep(0.05)
    assert holder is not None
    time.sleep(0.7)
    loaders[holder.decode()].send_signal(signal.SIGKILL)   # the lease holder dies mid-load
    writers[0].send_signal(signal.SIGKILL)                 # and so does one replica
    time.sleep(1.0)
    redis_server.restart(down_s=0.5)                      # Redis restarts (lease and all gone)
    acked = set()
    for w in writers:
        out, _err = w.communicate(timeout=120)
        for line in out.splitlines():
            acked.update(line.split())
    for p in loaders.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
    # A final loader takes what is left (the loaders' runs were bounded).
    final = FleetLoader(root, lambda: DuckDBSink(db), redis_server.url, holder="final")
    deadline = time.monotonic() + 60         # once the killed loaders' leases have expired
    while time.monotonic() < deadline:
        if final.load_once() == 0 and final.holding:
            break
        time.sleep(0.2)
    final.stop(final_load=False)
    ids = _store_ids(db)
    assert len(ids) == len(set(ids)), "duplicates in the store"
    assert acked <= set(ids), f"{len(acked - set(ids))} answered exchanges missing"
    assert len(acked) >= 3000                              # the two surviving replicas finished
    assert writers[0].returncode == -signal.SIGKILL and len(acked) < 4500   # the killed one did not
