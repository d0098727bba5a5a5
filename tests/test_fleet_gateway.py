"""Two gateway replicas (real uvicorn on loopback) sharing one real redis-server: one view of an
account spread over both, one limit, one operator, one store; and Redis going away."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from distillguard.gateway.app import Gateway, build_app
from distillguard.gateway.config import load_config
from distillguard.gateway.server import ServerThread, free_port
from distillguard.store import EventStore
from gateway_support import ADMIN, FaultyUpstream, write_keys
from redis_support import redis_server  # noqa: F401  (fixture)

ALICE = {"authorization": "Bearer sk-alice-0001"}
ADMIN_H = {"authorization": f"Bearer {ADMIN}"}


@contextlib.contextmanager
def fleet(tmp_path: Path, redis_url: str, n: int = 2, config_text: str | None = None) -> Iterator[list]:
    upstream = ServerThread(FaultyUpstream())
    upstream.start()
    config_path = None
    if config_text is not None:
        config_path = tmp_path / "gateway.toml"
        config_path.write_text(config_text)
    keys = write_keys(tmp_path)
    replicas = []
    try:
        for i in range(n):
            cfg = load_config(config_path, upstream=upstream.url, db=tmp_path / "events.duckdb", keys=keys,
                              admin_token=ADMIN, state=redis_url)
            cfg.log.dir = tmp_path / "logs" / f"r{i}"
            cfg.log.replica = f"r{i}"
            cfg.log.load_interval_s = 0.2
            gw = Gateway(cfg)
            server = ServerThread(build_app(gw), port=free_port())
            server.start()
            replicas.append((gw, server))
        yield [(gw, server.url) for gw, server in replicas]
    finally:
        for _gw, server in replicas:
            server.stop()
        upstream.stop()


def _chat(url: str, text: str, headers=ALICE, timeout: float = 10.0) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", headers=headers, timeout=timeout,
                      json={"model": "ok", "messages": [{"role": "user", "content": text}]})


def _wait(cond, timeout: float = 3.0) -> float:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "condition not met in time"
        time.sleep(0.02)
    return time.monotonic() - t0


def test_two_replicas_share_accounts_operators_and_the_store(redis_server, tmp_path):
    with fleet(tmp_path, redis_server.url) as reps:
        (a, url_a), (b, url_b) = reps
        assert httpx.get(f"{url_a}/healthz").json()["state"] == "shared"
        for i in range(20):                       # round-robin over the two replicas
            assert _chat((url_a, url_b)[i % 2], f"question {i} about the weather").status_code == 200
        # Each replica scores alice on all 20 of her queries, wherever they arrived (within 1 s).
        delay = _wait(lambda: all(g.scorer.accounts.get("alice") and g.scorer.accounts["alice"].queries == 20
                                  for g in (a, b)))
        assert delay < 1.0
        view = httpx.get(f"{url_b}/admin/accounts/alice", headers=ADMIN_H).json()
        assert view["queries"] == 20
        # An operator's block through one replica holds on the other within 1 s.
        r = httpx.post(f"{url_a}/admin/accounts/alice/action", headers=ADMIN_H,
                       json={"action": "block", "reason": "seen scraping"})
        assert r.status_code == 200
        _wait(lambda: "alice" in b.policy.manual, timeout=1.0)
        refused = _chat(url_b, "one more")
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "manual_block"
        # The refusal is grounds for an appeal filed through the other replica.
        _wait(lambda: "alice" in a.refusals)
        httpx.post(f"{url_a}/admin/accounts/alice/action", headers=ADMIN_H, json={"action": "clear"})
        _wait(lambda: "alice" not in b.policy.manual)
        assert _chat(url_b, "back again").status_code == 200
        # Allowlist and a key added at runtime reach the other replica too.
        httpx.put(f"{url_b}/admin/allowlist/research-lab", headers=ADMIN_H)
        _wait(lambda: "research-lab" in a.allowlist)
        r = httpx.post(f"{url_a}/admin/keys", headers=ADMIN_H, json={"key": "sk-carol-000004", "account": "carol"})
        assert r.status_code == 201
        _wait(lambda: b.keys.lookup("sk-carol-000004") is not None)
        assert _chat(url_b, "hello from carol", headers={"authorization": "Bearer sk-carol-000004"}).status_code == 200
        status = httpx.get(f"{url_a}/admin/status", headers=ADMIN_H).json()["state"]
        assert status["mode"] == "shared" and status["backend"] == "redis" and status["published"] >= 10
        metrics = httpx.get(f"{url_a}/metrics").text
        assert "distillguard_state_shared 1.0" in metrics
    # Both replicas' logs are in the one store, each exchange once.
    with EventStore(tmp_path / "events.duckdb") as store:
        ids = [row[0] for row in store.run("SELECT id FROM events")]
    assert len(ids) == 23 and len(set(ids)) == 23


def test_a_limit_holds_across_replicas(redis_server, tmp_path):
    config = "[policy.limits]\nrequests_per_minute = 6\n"
    with fleet(tmp_path, redis_server.url, config_text=config) as reps:
        urls = [u for _g, u in reps]
        codes = [_chat(urls[i % 2], f"q{i}").status_code for i in range(12)]
        assert codes.count(200) == 6 and codes[:6] == [200] * 6 and codes.count(429) == 6


def test_redis_down_falls_back_to_local_state_and_recovers(redis_server, tmp_path):
    with fleet(tmp_path, redis_server.url) as reps:
        (a, url_a), (b, url_b) = reps
        assert _chat(url_a, "before").status_code == 200
        redis_server.stop()
        # Fail open: answered on local state, logged, and said so.
        assert _chat(url_a, "during 1").status_code == 200
        _wait(lambda: not a.fleet.state.connected)
        health = httpx.get(f"{url_a}/healthz").json()
        assert health["state"] == "local" and health["status"] == "degraded"
        assert _chat(url_a, "during 2").status_code == 200
        assert httpx.get(f"{url_a}/admin/status", headers=ADMIN_H).json()["state"]["mode"] == "local"
        assert "distillguard_state_shared 0.0" in httpx.get(f"{url_a}/metrics").text
        redis_server.start()
        _wait(lambda: a.fleet.state.connected and b.fleet.state.connected, timeout=10)
        # What a saw during the outage reaches b once Redis is back.
        _wait(lambda: b.scorer.accounts.get("alice") is not None and b.scorer.accounts["alice"].queries == 3,
              timeout=5)
        health = httpx.get(f"{url_a}/healthz").json()
        assert health["state"] == "shared" and health["status"] == "ok"


def test_fail_closed_refuses_while_shared_state_is_away(redis_server, tmp_path):
    with fleet(tmp_path, redis_server.url, n=1, config_text='[policy]\nfail = "closed"\n') as reps:
        (a, url_a), = reps
        assert _chat(url_a, "before").status_code == 200
        redis_server.stop()
        _chat(url_a, "trips the fallback")
        _wait(lambda: not a.fleet.state.connected)
        r = _chat(url_a, "during")
        assert r.status_code == 429 and r.json()["error"]["code"] == "shared_state_unavailable"
        assert r.headers["retry-after"] == "1"
