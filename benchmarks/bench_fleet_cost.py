"""The fleet's own CPU cost per request, in isolation from HTTP: what sharing state costs a
replica, less sensitive to a busy machine than throughput (process CPU time, not wall time).

One process, a real redis-server on loopback. Replica A admits N requests (``--concurrency``
at a time, 1,000 accounts, two token buckets each, the request's observation published) and
publishes each answer's output-token record; replica B folds everything into a live scorer.
Prints the CPU time of the whole process (A's client side, B's reads and folds) per request,
and the admission round trip A's requests saw (in a loop this busy, mostly the loop's own
queueing, not Redis).

    python benchmarks/bench_fleet_cost.py [--requests 4000] [--concurrency 32] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_gateway import PROMPTS, free_port  # noqa: E402

from distillguard.detect.baseline import load_default  # noqa: E402
from distillguard.events.schema import prompt_view  # noqa: E402
from distillguard.gateway.fleet.observation import Observation, fold  # noqa: E402
from distillguard.gateway.fleet.state import SharedState  # noqa: E402
from distillguard.gateway.online import read_request  # noqa: E402
from distillguard.gateway.scorer import LiveScorer  # noqa: E402


async def one_run(url: str, n: int, concurrency: int, facts: list) -> dict:
    a, b = SharedState(url, replica="a"), SharedState(url, replica="b")
    scorer = LiveScorer(load_default(), 0.001)
    b.on_observation = lambda obs: fold(scorer, obs)
    await a.start()
    await b.start()
    todo = list(range(n))

    async def client() -> None:
        while todo:
            i = todo.pop()
            account = f"acct-{i % 1000}"
            await a.admit([(f"account:{account}:requests", 1e9, 1.0, 1.0), (f"account:{account}:tokens", 1e9, 0.0, 0.0)],
                          True, Observation("q", account, time.time(), facts=facts[i], ip="127.0.0.1"))
            await asyncio.sleep(0.002)          # the upstream's answer
            a.publish(Observation("o", account, time.time(), completion_tokens=20, prompt_chars=90))

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*[client() for _ in range(concurrency)])
    while b.counts["folded"] < 2 * n and time.perf_counter() - t0 < 120:
        await asyncio.sleep(0.005)
    cpu = time.process_time() - cpu0
    out = {"cpu_ms": cpu / n * 1000, "folded": b.counts["folded"], "rtt": a.rtt_ms()}
    await a.stop()
    await b.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    redis = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    facts = [read_request(prompt_view({"model": "m", "messages": [{"role": "user", "content":
                                                                   f"{PROMPTS[i % len(PROMPTS)]} ({i})"}]}), 4096)
             for i in range(args.requests)]
    try:
        print(f"load average (1 min): {os.getloadavg()[0]:.2f}")
        for r in range(args.repeat):
            out = asyncio.run(one_run(f"redis://127.0.0.1:{port}/{r % 16}", args.requests, args.concurrency, facts))
            print(f"run {r + 1}: {out['cpu_ms']:.3f} ms CPU per request (sender + receiver + fold), "
                  f"{out['folded']:,} records folded, admission p50 {out['rtt']['p50']} ms, p99 {out['rtt']['p99']} ms, "
                  f"load {os.getloadavg()[0]:.2f}")
    finally:
        redis.terminate()
        redis.wait()


if __name__ == "__main__":
    main()
