"""Gateway overhead: CPU per proxied request, throughput against direct, added latency, lost events.

Starts a fixed-completion upstream (``distillguard serve``: uvicorn + uvloop + httptools) and the
gateway (``distillguard gateway``) as separate processes on loopback, then loads both with
``wrk`` (Debian package; not ours) and with a Python client (httpx, asyncio) that counts every
answer so lost events can be asserted exactly.

    python benchmarks/bench_gateway.py [--duration 15] [--accounts 1000]

The gateway runs in shadow mode so every request is proxied, logged and scored (enforcing would
answer the benchmark's own bot-like traffic with cheap 403s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "distillguard"]
LOGS = Path(tempfile.mkdtemp(prefix="dg-bench-logs-"))   # servers' stderr (a pipe nobody reads would stall them)

PROMPTS = [
    "Can you explain how a hash map handles collisions, with a short example in Python?",
    "Write a polite email to my landlord asking when the heating will be repaired.",
    "What are the main differences between TCP and UDP, and when would I pick each?",
    "Summarise the causes of the French Revolution in five bullet points.",
    "Give me a weekly meal plan for a vegetarian who trains for a marathon.",
]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited; see the logs in {LOGS}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


def start_upstream(delay_ms: float, kind: str = "serve") -> tuple[subprocess.Popen, str]:
    """``kind`` "serve": ``distillguard serve``; "fast": benchmarks/fast_upstream.py (a bare asyncio
    server, for runs where the upstream's own CPU must not compete with the gateway's)."""
    port = free_port()
    command = ([sys.executable, str(Path(__file__).parent / "fast_upstream.py")] if kind == "fast"
               else CLI + ["serve"])
    proc = subprocess.Popen(command + ["--port", str(port), "--delay-ms", str(delay_ms)],
                            stdout=subprocess.DEVNULL, stderr=open(LOGS / f"upstream-{port}.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/v1/models", proc)
    return proc, url


def start_gateway(upstream: str, work: Path, keys: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(CLI + ["gateway", "--upstream", upstream, "--port", str(port), "--keys", str(keys),
                                   "--db", str(work / "events.duckdb"), "--log-dir", str(work / "log"),
                                   "--mode", "shadow"],
                            stdout=subprocess.DEVNULL, stderr=open(LOGS / f"gateway-{port}.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/healthz", proc)
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()


def cpu_seconds(proc: subprocess.Popen) -> float:
    t = psutil.Process(proc.pid).cpu_times()
    return t.user + t.system


def wrk_script(path: Path, keys: list[str], model: str = "m") -> None:
    lua_keys = ",".join(json.dumps(k) for k in keys)
    lua_prompts = ",".join(json.dumps(p) for p in PROMPTS)
    path.write_text(f"""
local keys = {{{lua_keys}}}
local prompts = {{{lua_prompts}}}
local n = 0
request = function()
  n = n + 1
  local key = keys[(n % #keys) + 1]
  local body = '{{"model":"{model}","max_tokens":256,"messages":[{{"role":"user","content":"' ..
               prompts[(n % #prompts) + 1] .. ' (' .. n .. ')"}}]}}'
  return wrk.format("POST", "/v1/chat/completions",
                    {{["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key}}, body)
end
""")


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def run_wrk(url: str, script: Path, connections: int, duration: int, threads: int = 2) -> dict:
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--latency",
                          "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    lat = {}
    for pct, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)", out, re.M):
        lat[f"p{pct}"] = float(value) * _UNIT[unit]
    return {"rps": rps, "requests": total, "non_2xx": int(non2xx.group(1)) if non2xx else 0, "latency_ms": lat}


async def python_load(url: str, keys: list[str], n: int, concurrency: int) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    ok = 0
    queue = list(range(n))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal ok
        while queue:
            i = queue.pop()
            body = {"model": "m", "max_tokens": 256,
                    "messages": [{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} ({i})"}]}
            t = time.perf_counter()
            try:
                r = await client.post("/v1/chat/completions", json=body,
                                      headers={"authorization": f"Bearer {keys[i % len(keys)]}"})
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            latencies.append((time.perf_counter() - t) * 1000)
            ok += r.status_code == 200

    # One single-connection client per worker: a shared httpx pool of 64 connections spends so
    # much CPU on its bookkeeping that it, not the server, would set the pace.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [httpx.AsyncClient(base_url=url, limits=limits, timeout=60) for _ in range(concurrency)]
    start = time.perf_counter()
    await asyncio.gather(*(worker(client) for client in clients))
    wall = time.perf_counter() - start
    for client in clients:
        await client.aclose()
    latencies.sort()
    return {"ok": ok, "errors": errors, "rps": n / wall, "p50": statistics.median(latencies),
            "p99": latencies[int(0.99 * (len(latencies) - 1))]}


def stored_events(db: Path) -> int:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return int(con.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        con.close()


def scenario(name: str, delay_ms: float, connections: int, args, keys: list[str], keys_path: Path,
             script: Path) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"dg-bench-{name}-"))
    upstream, up_url = start_upstream(delay_ms)
    gateway, gw_url = start_gateway(up_url, work, keys_path)
    try:
        run_wrk(up_url, script, connections, 3)                       # warm-up
        warm = run_wrk(gw_url, script, connections, 3)
        direct = run_wrk(up_url, script, connections, args.duration)
        cpu0 = cpu_seconds(gateway)
        proxied = run_wrk(gw_url, script, connections, args.duration)
        cpu1 = cpu_seconds(gateway)
        py_direct = asyncio.run(python_load(up_url, keys, args.python_requests, connections))
        py_gateway = asyncio.run(python_load(gw_url, keys, args.python_requests, connections))
    finally:
        stop(gateway)
        stop(upstream)
    events = stored_events(work / "events.duckdb")
    # wrk counts completed requests only (those cut at the end of a run may be logged too).
    answered_min = warm["requests"] + proxied["requests"] + py_gateway["ok"]
    cpu_ms = (cpu1 - cpu0) / proxied["requests"] * 1000
    result = {
        "scenario": name, "upstream_delay_ms": delay_ms, "connections": connections,
        "direct_rps": direct["rps"], "gateway_rps": proxied["rps"], "ratio": proxied["rps"] / direct["rps"],
        "gateway_cpu_ms_per_request": cpu_ms, "gateway_rps_per_core": 1000.0 / cpu_ms,
        "direct_latency_ms": direct["latency_ms"], "gateway_latency_ms": proxied["latency_ms"],
        "added_p50_ms": proxied["latency_ms"].get("p50", 0) - direct["latency_ms"].get("p50", 0),
        "added_p99_ms": proxied["latency_ms"].get("p99", 0) - direct["latency_ms"].get("p99", 0),
        "gateway_non_2xx": proxied["non_2xx"],
        "python_client": {"direct": py_direct, "gateway": py_gateway,
                          "added_p50_ms": py_gateway["p50"] - py_direct["p50"],
                          "added_p99_ms": py_gateway["p99"] - py_direct["p99"]},
        "events_stored": events, "answered_at_least": answered_min,
        "lost_events": max(0, answered_min - events),
    }
    shutil.rmtree(work, ignore_errors=True)
    return result


LITELLM_KEY = "sk-litellm-bench-0123456789abcdef"


def start_litellm(binary: str, upstream: str) -> tuple[subprocess.Popen, str]:
    """LiteLLM's proxy (installed separately, e.g. in its own venv) in front of the same upstream."""
    port = free_port()
    env = {**os.environ, "LITELLM_MASTER_KEY": LITELLM_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "OPENAI_API_KEY": "sk-unused"}
    proc = subprocess.Popen([binary, "--model", "openai/fixed-model", "--api_base", upstream + "/v1", "--host",
                             "127.0.0.1", "--port", str(port), "--telemetry", "False", "--num_workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=open(LOGS / f"litellm-{port}.log", "wb"), env=env)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/health/liveliness", proc, timeout=120)
    return proc, url


def tree_cpu_seconds(proc: subprocess.Popen) -> float:
    root = psutil.Process(proc.pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def litellm_scenario(binary: str, delay_ms: float, connections: int, duration: int, work: Path) -> dict:
    upstream, up_url = start_upstream(delay_ms)
    script = work / "litellm.lua"
    wrk_script(script, [LITELLM_KEY], model="fixed-model")
    proxy, url = start_litellm(binary, up_url)
    try:
        run_wrk(url, script, connections, 3)
        direct = run_wrk(up_url, script, connections, duration)
        cpu0 = tree_cpu_seconds(proxy)
        proxied = run_wrk(url, script, connections, duration)
        cpu1 = tree_cpu_seconds(proxy)
    finally:
        stop(proxy)
        stop(upstream)
    cpu_ms = (cpu1 - cpu0) / max(1, proxied["requests"]) * 1000
    return {"scenario": f"litellm, upstream {delay_ms:g} ms", "direct_rps": direct["rps"], "proxy_rps": proxied["rps"],
            "ratio": proxied["rps"] / direct["rps"], "cpu_ms_per_request": cpu_ms, "rps_per_core": 1000.0 / cpu_ms,
            "added_p50_ms": proxied["latency_ms"].get("p50", 0) - direct["latency_ms"].get("p50", 0),
            "added_p99_ms": proxied["latency_ms"].get("p99", 0) - direct["latency_ms"].get("p99", 0),
            "non_2xx": proxied["non_2xx"]}


def memory_per_account(n_accounts: int) -> dict:
    import tracemalloc

    from distillguard.detect.baseline import load_default
    from distillguard.events.schema import prompt_view
    from distillguard.gateway.online import read_request
    from distillguard.gateway.scorer import LiveScorer

    scorer = LiveScorer(load_default(), 1e-3)
    facts = [read_request(prompt_view({"messages": [{"role": "user", "content": f"{p} ({i})"}]}), 4096)
             for i, p in enumerate(PROMPTS * 40)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for a in range(n_accounts):
        for j in range(10):
            scorer.observe(f"acct-{a:06d}", facts[(a * 7 + j) % len(facts)], 1.79e9 + a + j * 60,
                           ip=f"10.{a // 65536 % 256}.{a // 256 % 256}.{a % 256}", user_agent="bench/1.0",
                           identity={"email": f"user{a}@example.com"})
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return {"accounts": n_accounts, "bytes_per_account": used / n_accounts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    parser.add_argument("--accounts", type=int, default=1000, help="API keys the load is spread over")
    parser.add_argument("--python-requests", type=int, default=3000)
    parser.add_argument("--memory-accounts", type=int, default=20000)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--litellm", help="path of a `litellm` executable (its own venv: pip install 'litellm[proxy]') "
                                          "to measure LiteLLM's proxy in the same run")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    work = Path(tempfile.mkdtemp(prefix="dg-bench-"))
    keys = [f"sk-bench-{i:06d}" for i in range(args.accounts)]
    keys_path = work / "keys.json"
    keys_path.write_text(json.dumps({k: f"bench-account-{i:06d}" for i, k in enumerate(keys)}))
    script = work / "post.lua"
    wrk_script(script, keys)
    results = [scenario("fast-upstream", 0.0, 64, args, keys, keys_path, script),
               scenario("upstream-100ms", 100.0, 64, args, keys, keys_path, script)]
    litellm = ([litellm_scenario(args.litellm, delay, 64, args.duration, work) for delay in (0.0, 100.0)]
               if args.litellm else [])
    memory = memory_per_account(args.memory_accounts)
    for r in results:
        print(f"\n== {r['scenario']} (upstream delay {r['upstream_delay_ms']:g} ms, {r['connections']} connections, "
              f"wrk) ==")
        print(f"direct {r['direct_rps']:,.0f} req/s; through the gateway {r['gateway_rps']:,.0f} req/s "
              f"(ratio {r['ratio']:.1%})")
        print(f"gateway CPU {r['gateway_cpu_ms_per_request']:.3f} ms/request → {r['gateway_rps_per_core']:,.0f} "
              f"req/s per core")
        print(f"latency p50 {r['direct_latency_ms'].get('p50', 0):.2f} → {r['gateway_latency_ms'].get('p50', 0):.2f} ms "
              f"(+{r['added_p50_ms']:.2f}); p99 {r['direct_latency_ms'].get('p99', 0):.2f} → "
              f"{r['gateway_latency_ms'].get('p99', 0):.2f} ms (+{r['added_p99_ms']:.2f})")
        pc = r["python_client"]
        print(f"python client: direct {pc['direct']['rps']:,.0f} req/s, gateway {pc['gateway']['rps']:,.0f} req/s; "
              f"added p50 {pc['added_p50_ms']:+.2f} ms, p99 {pc['added_p99_ms']:+.2f} ms")
        print(f"events stored {r['events_stored']:,} ≥ answered {r['answered_at_least']:,}: lost {r['lost_events']}")
    for r in litellm:
        print(f"\n== {r['scenario']} (wrk, 64 connections) ==")
        print(f"direct {r['direct_rps']:,.0f} req/s; through LiteLLM {r['proxy_rps']:,.0f} req/s "
              f"(ratio {r['ratio']:.1%}); LiteLLM CPU {r['cpu_ms_per_request']:.2f} ms/request → "
              f"{r['rps_per_core']:,.0f} req/s per core; added p50 {r['added_p50_ms']:+.1f} ms, "
              f"p99 {r['added_p99_ms']:+.1f} ms; non-2xx {r['non_2xx']}")
    print(f"\nmemory per tracked account: {memory['bytes_per_account']:,.0f} bytes "
          f"({memory['accounts']:,} accounts, 10 requests each)")
    if args.json:
        args.json.write_text(json.dumps({"scenarios": results, "litellm": litellm, "memory": memory}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
