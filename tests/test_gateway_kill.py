"""SIGKILL the gateway process under load: every answered request must be in the log, and in the
store once the gateway is back."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import httpx
import orjson

from distillguard.gateway.server import ServerThread, free_port
from distillguard.gateway.wal import iter_log_records
from distillguard.serve.fixed import FixedCompletionServer
from gateway_support import write_keys

N_REQUESTS = 3000
CONCURRENCY = 32
KILL_AFTER = 400


def start_gateway(tmp_path: Path, upstream: str, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "distillguard", "gateway", "--upstream", upstream, "--port", str(port),
           "--db", str(tmp_path / "events.duckdb"), "--keys", str(tmp_path / "keys.json"),
           "--log-dir", str(tmp_path / "log"),
           # durability, not detection: 3,000 scripted distinct requests in seconds are a harvest
           # the policy would act on, so decisions are logged and never enforced here
           "--mode", "shadow"]
    # stderr to a file, not a pipe nobody drains: a full pipe would block the gateway's logging
    err = open(tmp_path / "gateway.stderr", "wb")                 # noqa: SIM115 (lives with the process)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited: {(tmp_path / 'gateway.stderr').read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("gateway did not start")


async def load(url: str, answered: list[str], proc: subprocess.Popen) -> int:
    sent = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(N_REQUESTS):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent
        while not queue.empty():
            i = queue.get_nowait()
            sent += 1
            try:
                r = await client.post("/v1/chat/completions", json={
                    "model": "m", "messages": [{"role": "user", "content": f"request number {i}"}]})
            except httpx.HTTPError:
                return                                   # the gateway is gone
            if r.status_code == 200:
                answered.append(r.headers["x-request-id"])
                if len(answered) == KILL_AFTER:
                    os.kill(proc.pid, signal.SIGKILL)    # mid-load: the loader is busy too

    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, headers={"authorization": "Bearer sk-alice-0001"}, limits=limits,
                                 timeout=10) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
    return sent


def test_sigkill_mid_load_loses_no_answered_request(tmp_path):
    write_keys(tmp_path)
    with ServerThread(FixedCompletionServer()) as upstream:
        port = free_port()
        proc = start_gateway(tmp_path, upstream.url, port)
        answered: list[str] = []
        try:
            sent = asyncio.run(load(f"http://127.0.0.1:{port}", answered, proc))
        finally:
            proc.kill()
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        assert KILL_AFTER <= len(answered) < N_REQUESTS, (len(answered), sent)

        logged = {orjson.loads(r)["id"] for r in iter_log_records(tmp_path / "log")}
        missing = set(answered) - logged
        # The log may hold more (loaded already and deleted, or written but not yet answered) but
        # never less than what was answered, except what the loader already moved to the store.
        restarted = start_gateway(tmp_path, upstream.url, port)
        restarted.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal (the exit status says SIGTERM).
        assert restarted.wait(timeout=60) in (0, -signal.SIGTERM)
    con = duckdb.connect(str(tmp_path / "events.duckdb"), read_only=True)
    stored = {row[0] for row in con.execute("SELECT id FROM events").fetchall()}
    count, distinct = con.execute("SELECT count(*), count(DISTINCT id) FROM events").fetchone()
    con.close()
    assert set(answered) <= stored, f"{len(set(answered) - stored)} answered requests lost"
    assert count == distinct                              # replaying the log did not duplicate
    assert missing <= stored
    print(f"answered {len(answered)} of {sent} sent before SIGKILL; all {len(answered)} in the store "
          f"({count} events stored)")
