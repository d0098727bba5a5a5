"""``distillguard gateway --workers 2 --state redis://...`` as a real process tree: requests spread
over both workers, one worker SIGKILLed and Redis restarted under load, and every answered
exchange in the store exactly once afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from distillguard.gateway.server import ServerThread, free_port
from distillguard.store import EventStore
from gateway_support import FaultyUpstream, write_keys
from redis_support import redis_server  # noqa: F401  (fixture)

SRC = Path(__file__).resolve().parents[1] / "src"


def _workers(proc: subprocess.Popen) -> list[psutil.Process]:
    """The worker processes (not multiprocessing's resource tracker, not a dead one not yet reaped)."""
    out = []
    for p in psutil.Process(proc.pid).children():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(p.cmdline()):
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.slow
def test_workers_survive_a_sigkill_and_a_redis_restart_with_nothing_lost(redis_server, tmp_path):
    upstream = ServerThread(FaultyUpstream())
    upstream.start()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    gw = subprocess.Popen([sys.executable, "-m", "distillguard", "gateway", "--upstream", upstream.url,
                           "--keys", str(write_keys(tmp_path)), "--state", redis_server.url, "--workers", "2",
                           "--port", str(port), "--log-dir", str(tmp_path / "logs"), "--db",
                           str(tmp_path / "events.duckdb"), "--log-level", "warning"],
                          env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "gw.err", "wb"))
    url = f"http://127.0.0.1:{port}"
    answered: list[str] = []
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                with httpx.Client(base_url=url, timeout=10) as c:       # a new connection: either worker
                    r = c.post("/v1/chat/completions", headers={"authorization": "Bearer sk-alice-0001"},
                               json={"model": "ok", "messages": [{"role": "user", "content": f"q {i}"}]})
                if r.status_code == 200:
                    answered.append(r.headers["x-request-id"])
            except httpx.HTTPError:
                time.sleep(0.05)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200 and len(_workers(gw)) == 2:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        time.sleep(3)
        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(3)
        victim = _workers(gw)[0]
        victim.send_signal(signal.SIGKILL)
        time.sleep(2)
        redis_server.restart(down_s=0.5)
        time.sleep(4)
        stop.set()
        for t in threads:
            t.join()
        assert len(_workers(gw)) == 2 and victim.pid not in [p.pid for p in _workers(gw)]  # restarted
    finally:
        stop.set()
        gw.send_signal(signal.SIGTERM)
        gw.wait(timeout=120)
        upstream.stop()
    assert len(answered) > 20
    dirs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert len(dirs) == 2                     # one log per worker; the restarted one reused its own
    with EventStore(tmp_path / "events.duckdb") as store:
        ids = [row[0] for row in store.run("SELECT id FROM events")]
    assert len(ids) == len(set(ids)), "duplicated exchanges in the store"
    missing = set(answered) - set(ids)
    assert not missing, f"{len(missing)} answered exchanges missing from the store"
