"""The gateway as a fleet: throughput and CPU of ``--workers 1`` and ``--workers 2`` against
direct, side by side in one run, with shared state on a real redis-server.

Starts redis-server, a fixed-completion upstream with a 100 ms delay (``distillguard serve``) and
``distillguard gateway --state redis://... --workers N`` (and, as the baseline, the embedded
gateway without ``--state``; shadow mode: every request proxied,
logged, scored, its observation published and folded by the other worker), then loads each with
``wrk`` (Debian package). CPU per request is the gateway's whole process tree (supervisor and
workers: event loops, log writers, loader) divided by the requests wrk completed; Redis's CPU is
reported on its own. Lost events: stored in DuckDB (loaded by the lease holder) against answered.

    python benchmarks/bench_fleet.py [--duration 10] [--saturate 256] [--clients 64] [--upstream fast|serve]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
from bench_gateway import (CLI, LOGS, free_port, run_wrk, start_upstream, stop, stored_events,  # noqa: E402
                           wait_ready, wrk_script)


def tree_cpu(pid: int) -> float:
    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc] + proc.children(recursive=True):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _children_cpu() -> float:
    """CPU of this process's finished children (wrk runs to completion under subprocess.run)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def start_gateway(upstream: str, work: Path, keys: Path, state: str, workers: int) -> tuple[subprocess.Popen, str]:
    """``workers`` 0: the embedded gateway (no --state), the baseline."""
    port = free_port()
    fleet = ["--state", state, "--workers", str(workers)] if workers else []
    proc = subprocess.Popen(CLI + ["gateway", "--upstream", upstream, "--port", str(port), "--keys", str(keys),
                                   "--db", str(work / "events.duckdb"), "--log-dir", str(work / "log"),
                                   "--mode", "shadow", "--log-level", "warning"] + fleet,
                            stdout=subprocess.DEVNULL, stderr=open(LOGS / f"gateway-{port}.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/healthz", proc, timeout=120)
    if workers > 1:                  # every worker up (each answers /healthz once started)
        deadline = time.monotonic() + 120
        while len(psutil.Process(proc.pid).children()) < workers and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3.0)
    return proc, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--saturate", type=int, default=256, help="connections that saturate one worker")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--delay-ms", type=float, default=100.0)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--upstream", choices=("fast", "serve"), default="fast",
                        help="fast: benchmarks/fast_upstream.py (bare asyncio, leaves the cores to the gateway); "
                             "serve: distillguard serve (uvicorn)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    load0 = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="dg-bench-fleet-"))
    keys = [f"sk-bench-{i:05d}" for i in range(args.accounts)]
    keys_path = work / "keys.json"
    keys_path.write_text(json.dumps({k: f"acct-{i}" for i, k in enumerate(keys)}))
    script = work / "load.lua"
    wrk_script(script, keys)
    rport = free_port()
    redis = subprocess.Popen([shutil.which("redis-server"), "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(work)], stdout=subprocess.DEVNULL)
    state = f"redis://127.0.0.1:{rport}/0"
    upstream, up_url = start_upstream(args.delay_ms, args.upstream)
    rows = []
    try:
        run_wrk(up_url, script, args.saturate, 2)
        direct = {c: run_wrk(up_url, script, c, args.duration) for c in (args.saturate, args.clients)}
        for workers in (0, 1, 2):
            gw_work = work / f"w{workers}"
            gw_work.mkdir()
            gateway, gw_url = start_gateway(up_url, gw_work, keys_path, state, workers)
            try:
                warm = run_wrk(gw_url, script, args.saturate, 3)           # warm-up
                out = {}
                for c in (args.saturate, args.clients):
                    cpu0, r0 = tree_cpu(gateway.pid), psutil.Process(redis.pid).cpu_times()
                    u0, k0 = tree_cpu(upstream.pid), _children_cpu()
                    res = run_wrk(gw_url, script, c, args.duration)
                    cpu1, r1 = tree_cpu(gateway.pid), psutil.Process(redis.pid).cpu_times()
                    u1, k1 = tree_cpu(upstream.pid), _children_cpu()
                    # What else the 2 cores spend per request: the upstream and wrk itself.
                    res["others_cpu_ms"] = ((u1 - u0) + (k1 - k0)) / res["requests"] * 1000
                    res["cpu_ms"] = (cpu1 - cpu0) / res["requests"] * 1000
                    res["redis_cpu_ms"] = ((r1.user + r1.system) - (r0.user + r0.system)) / res["requests"] * 1000
                    res["load"] = os.getloadavg()[0]
                    out[c] = res
            finally:
                stop(gateway)
            time.sleep(1.0)
            answered = warm["requests"] + sum(r["requests"] for r in out.values())
            rows.append((workers, out, stored_events(gw_work / "events.duckdb"), answered))
    finally:
        stop(upstream)
        redis.terminate()
        redis.wait()
    print(f"load average (1 min) at the start: {load0:.2f}, at the end: {os.getloadavg()[0]:.2f}")
    print(f"upstream {args.upstream}, delay {args.delay_ms:g} ms; direct: {direct[args.saturate]['rps']:,.0f} req/s at "
          f"{args.saturate} connections, {direct[args.clients]['rps']:,.0f} at {args.clients}")
    print(f"{'workers':>7}{'req/s @' + str(args.saturate):>14}{'vs 1 worker':>12}{'CPU/req':>10}{'Redis CPU/req':>15}"
          f"{'req/s @' + str(args.clients):>13}{'% direct':>10}{'p50 +ms':>9}{'p99 +ms':>9}{'stored':>9}"
          f"{'answered':>10}{'load':>6}{'up+wrk CPU/req':>16}")
    base = rows[1][1][args.saturate]["rps"]
    for workers, out, stored, answered in rows:
        s, c = out[args.saturate], out[args.clients]
        d = direct[args.clients]
        print(f"{workers or 'embed':>7}{s['rps']:>14,.0f}{s['rps'] / base:>11.2f}x{s['cpu_ms']:>8.2f}ms{s['redis_cpu_ms']:>13.3f}ms"
              f"{c['rps']:>13,.0f}{100 * c['rps'] / d['rps']:>9.1f}%"
              f"{c['latency_ms'].get('p50', 0) - d['latency_ms'].get('p50', 0):>9.1f}"
              f"{c['latency_ms'].get('p99', 0) - d['latency_ms'].get('p99', 0):>9.1f}{stored:>9,}"
              f"{answered:>10,}{s['load']:>6.1f}{s['others_cpu_ms']:>14.2f}ms")
    if args.json:
        args.json.write_text(json.dumps({"direct": direct, "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
