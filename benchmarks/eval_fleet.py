"""The fleet, measured in process against a real redis-server (started here on a free port):

* **detection**: lab traffic replayed in time order through N gateway replicas sharing state,
  each account's requests round-robined over the replicas (the worst case: every replica sees
  1/N of it first-hand); queries until the account (or its campaign) is acted on, N = 1 vs N;
* **limit**: a limit of R requests/minute per account, requests spread over N replicas on
  replayed time; admitted against what one bucket admits (R burst + R per minute);
* **round trip**: the per-request Redis script (buckets + observation XADD), sequential.

    python benchmarks/eval_fleet.py [--replicas 4] [--seed 3001] [--accounts 40] [--days 2] [--accounts-per-kind 2]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).parent))
from eval_gateway_online import evaluate  # noqa: E402

import eval_gateway_online  # noqa: E402
from distillguard.gateway.app import Gateway, build_app  # noqa: E402
from distillguard.gateway.config import load_config  # noqa: E402
from distillguard.gateway.fleet.observation import Observation  # noqa: E402
from distillguard.gateway.fleet.state import SharedState  # noqa: E402
from distillguard.gateway.replay import recorded_answers, replay  # noqa: E402
from distillguard.gateway.server import free_port  # noqa: E402


class RoundRobin(httpx.AsyncBaseTransport):
    """Each account's requests to the replicas in turn (by API key)."""

    def __init__(self, transports: list[httpx.AsyncBaseTransport]) -> None:
        self.transports = transports
        self.turn: dict[str, int] = defaultdict(int)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        key = request.headers.get("authorization", "")
        i = self.turn[key]
        self.turn[key] = i + 1
        return await self.transports[i % len(self.transports)].handle_async_request(request)


async def settle(gws: list[Gateway], timeout: float = 5.0) -> None:
    """Wait until every replica has folded everything the others published."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [g.fleet.state for g in gws]
        if all(not s.outbox and not s._pending and s._sender is None for s in states):
            last = await states[0].redis.xrevrange(states[0].stream, count=1)
            if not last or all(s.cursor == last[0][0].decode() for s in states):
                return
        await asyncio.sleep(0.05)


def make_replicas(n: int, url: str, work: Path, keys_path: Path, events, *, mode: str = "shadow",
                  config_text: str | None = None) -> list[Gateway]:
    gws = []
    cfg_path = None
    if config_text:
        cfg_path = work / "gateway.toml"
        cfg_path.write_text(config_text)
    for i in range(n):
        cfg = load_config(cfg_path, upstream="http://upstream.invalid", keys=keys_path,
                          trust_client_timestamps=True, trust_forwarded_for=True, state=url)
        cfg.log.dir = work / "log" / f"r{i}"
        cfg.log.replica = f"r{i}"
        cfg.log.sink = "none"
        cfg.log.fsync = False
        cfg.policy.mode = mode
        gws.append(Gateway(cfg, transport=httpx.MockTransport(recorded_answers(events))))
    return gws


def fleet_replay(n: int, url: str):
    async def run_replay(events, keys, work: Path):
        work.mkdir(parents=True, exist_ok=True)
        keys_path = work / "keys.json"
        keys_path.write_bytes(orjson.dumps(keys))
        gws = make_replicas(n, url, work, keys_path, events)
        for g in gws:
            await g.start()
        transport = RoundRobin([httpx.ASGITransport(app=build_app(g)) for g in gws])
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                out = await replay(client, events)
            rtt = [x for g in gws for x in g.fleet.state.rtt]
            run_replay.rtt = rtt
            return out
        finally:
            for g in gws:
                await g.stop()
    return run_replay


def start_redis(work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(work)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, f"redis://127.0.0.1:{port}/0"


def flush(url: str) -> None:
    import redis
    redis.Redis.from_url(url).flushall()


def summarise(result: dict) -> dict[str, list[int]]:
    out = {}
    for strategy, rows in result["per_strategy"].items():
        out[strategy] = sorted(r["queries_until_flag"] for r in rows if r["queries_until_flag"] is not None)
    return out


async def limit_check(url: str, n: int, per_minute: int, minutes: int, rate_factor: float, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    keys_path = work / "keys.json"
    keys_path.write_bytes(orjson.dumps({f"sk-acct-{i}": f"acct-{i}" for i in range(4)}))
    events = []
    gws = make_replicas(n, url, work, keys_path, events, mode="enforce",
                        config_text=f"[policy.limits]\nrequests_per_minute = {per_minute}\n")
    for g in gws:
        await g.start()
    transports = [httpx.ASGITransport(app=build_app(g)) for g in gws]
    clients = [httpx.AsyncClient(transport=t, base_url="http://gw") for t in transports]
    admitted = sent = 0
    t0 = 1_800_000_000.0
    step = 60.0 / (per_minute * rate_factor)
    total = int(minutes * per_minute * rate_factor)
    try:
        for i in range(total):
            ts = t0 + i * step
            sends = []
            for c, client in enumerate(clients):       # the same moment on every replica
                body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": f"q {i} {c}"}]})
                sends.append(client.post("/v1/chat/completions", content=body, headers={
                    "authorization": "Bearer sk-acct-0", "x-distillguard-replay-ts": repr(ts + c * step / n)}))
            for r in await asyncio.gather(*sends):
                sent += 1
                admitted += r.status_code == 200
    finally:
        for client in clients:
            await client.aclose()
        for g in gws:
            await g.stop()
    span_min = (total * step) / 60.0
    expected = per_minute + per_minute * span_min
    return {"replicas": n, "limit_rpm": per_minute, "sent": sent, "admitted": admitted,
            "expected": round(expected), "error_pct": round(100 * (admitted - expected) / expected, 2)}


async def round_trips(url: str, n: int = 3000) -> dict:
    from distillguard.events.schema import prompt_view
    from distillguard.gateway.online import read_request
    state = SharedState(url, replica="rtt")
    await state.start()
    facts = read_request(prompt_view({"model": "m", "messages": [{"role": "user", "content": "hello world"}]}), 4096)
    obs = Observation("q", "acct", time.time(), facts=facts, ip="192.0.2.7", user_agent="bench")
    times = []
    for i in range(n):
        t = time.perf_counter()
        await state.admit([("account:a:requests", 1e9, 1.0, 1.0), ("account:a:tokens", 1e9, 0.0, 0.0)], True, obs)
        times.append((time.perf_counter() - t) * 1000)
    await state.stop()
    times.sort()
    return {"n": n, "p50_ms": round(times[n // 2], 3), "p99_ms": round(times[int(n * 0.99)], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--seed", type=int, default=3001)
    parser.add_argument("--accounts", type=int, default=40)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--limit-rpm", type=int, default=120)
    parser.add_argument("--limit-minutes", type=int, default=10)
    parser.add_argument("--accounts-per-kind", type=int, default=0,
                        help="add every evasive extraction family and hard legitimate family, this many each")
    parser.add_argument("--skip-detection", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dg-fleet-"))
    proc, url = start_redis(work)
    try:
        rt = asyncio.run(round_trips(url))
        print(f"Redis round trip per request (2 buckets + observation XADD, sequential): p50 {rt['p50_ms']} ms, "
              f"p99 {rt['p99_ms']} ms over {rt['n']:,}")
        flush(url)
        lim = asyncio.run(limit_check(url, args.replicas, args.limit_rpm, args.limit_minutes, 2.0, work / "limit"))
        print(f"limit {lim['limit_rpm']} req/min over {lim['replicas']} replicas, {args.limit_minutes} min at 2x the "
              f"limit: admitted {lim['admitted']:,} of {lim['sent']:,}, one bucket admits {lim['expected']:,} "
              f"({lim['error_pct']:+.2f} %)")
        if args.skip_detection:
            return
        results = {}
        for n in (1, args.replicas):
            flush(url)
            runner = fleet_replay(n, url)
            eval_gateway_online.run_replay = runner
            t = time.perf_counter()
            results[n] = evaluate(args.seed, args.accounts, args.days, work / f"n{n}", args.accounts_per_kind)
            rtt = sorted(runner.rtt)
            print(f"{n} replica(s): {results[n]['events']:,} events in {time.perf_counter() - t:.0f} s; Redis round "
                  f"trip under replay p50 {rtt[len(rtt) // 2] * 1000:.2f} ms, p99 {rtt[int(len(rtt) * .99)] * 1000:.2f} ms")
        one, many = summarise(results[1]), summarise(results[args.replicas])
        print(f"\n{'strategy':<14}{'median q-to-flag, 1 replica':>28}{f'{args.replicas} replicas (round-robin)':>30}"
              f"{'change':>9}   per campaign (1 | N)")
        for strategy in sorted(set(one) | set(many)):
            a, b = one.get(strategy, []), many.get(strategy, [])
            ma = statistics.median(a) if a else None
            mb = statistics.median(b) if b else None
            change = f"{100 * (mb - ma) / ma:+.0f} %" if ma and mb else "-"
            print(f"{strategy:<16}{str(ma):>26}{str(mb):>30}{change:>9}   {a} | {b}")
        print(f"\n{'negatives':<14}{'flagged (1)':>12}{'flagged (N)':>12}")
        for kind in sorted(results[1]["negatives"]):
            print(f"{kind:<14}{results[1]['negatives'][kind]['flagged']:>12}"
                  f"{results[args.replicas]['negatives'].get(kind, {}).get('flagged', 0):>12}")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
