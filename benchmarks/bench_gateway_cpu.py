"""CPU per proxied request of the embedded gateway, for several source trees interleaved.

Each round starts one gateway per tree (``python -m distillguard gateway`` with ``PYTHONPATH`` set
to the tree's ``src``), loads it with wrk (256 connections, 1,000 keys, a 2 s warm-up, then
``--duration`` seconds) against one shared upstream, and prints the CPU time of the gateway's
process tree (user + system, and system alone) per request answered. Interleaving the trees in one
run is what makes a before/after comparison on a shared machine: CPU per request moves less with
the neighbours' load than throughput does, but it moves.

    python benchmarks/bench_gateway_cpu.py --duration 10 --rounds 4 before=/tmp/before/src after=src
    python benchmarks/bench_gateway_cpu.py --profile after ...   # also py-spy (raw) the first round of one tree
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
from bench_gateway import LOGS, free_port, run_wrk, start_upstream, stop, wait_ready, wrk_script  # noqa: E402


def tree_cpu(proc: psutil.Process) -> tuple[float, float]:
    total = system = 0.0
    for p in [proc] + proc.children(recursive=True):
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
        system += t.system
    return total, system


def run_one(label: str, src: str, up_url: str, keys: list[str], args: argparse.Namespace, profile: bool) -> dict:
    work = Path(tempfile.mkdtemp(prefix="dg-cpu-"))
    keys_path = work / "keys.json"
    keys_path.write_text(json.dumps({k: f"acct-{i}" for i, k in enumerate(keys)}))
    port = free_port()
    gw = subprocess.Popen([sys.executable, "-m", "distillguard", "gateway", "--upstream", up_url, "--port", str(port),
                           "--keys", str(keys_path), "--db", str(work / "events.duckdb"), "--log-dir", str(work / "log"),
                           "--mode", "shadow", "--log-level", "warning"],
                          env=dict(os.environ, PYTHONPATH=str(Path(src).resolve())),
                          stdout=subprocess.DEVNULL, stderr=open(LOGS / f"gateway-{port}.log", "wb"))
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url + "/healthz", gw, timeout=120)
        script = work / "load.lua"
        wrk_script(script, keys)
        run_wrk(url, script, args.connections, 2)
        proc = psutil.Process(gw.pid)
        c0, s0 = tree_cpu(proc)
        spy = None
        if profile:
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(gw.pid), "-d",
                                    str(args.duration), "-f", "raw", "-o", f"{args.profile_out}-{label}.txt", "-r", "200",
                                    "--nonblocking", "--gil"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        w = run_wrk(url, script, args.connections, args.duration)
        c1, s1 = tree_cpu(proc)
        if spy is not None:
            spy.wait()
        n = max(1, w["requests"])
        return {"label": label, "rps": w["rps"], "requests": w["requests"], "non_2xx": w["non_2xx"],
                "cpu_ms": 1000 * (c1 - c0) / n, "sys_ms": 1000 * (s1 - s0) / n, "load": os.getloadavg()[0]}
    finally:
        stop(gw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trees", nargs="+", help="label=path/to/src")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=256)
    ap.add_argument("--upstream", choices=("fast", "serve"), default="fast")
    ap.add_argument("--profile", help="label of the tree to py-spy (--gil) in the first round")
    ap.add_argument("--profile-out", default="/tmp/dg-cpu-spy")
    args = ap.parse_args()
    trees = [t.split("=", 1) for t in args.trees]
    LOGS.mkdir(parents=True, exist_ok=True)
    keys = [f"sk-bench-{i:04d}" for i in range(1000)]
    up, up_url = start_upstream(100.0, args.upstream)
    results: dict[str, list[float]] = {label: [] for label, _ in trees}
    try:
        for r in range(args.rounds):
            for label, src in trees:
                row = run_one(label, src, up_url, keys, args, profile=(args.profile == label and r == 0))
                results[label].append(row["cpu_ms"])
                print(f"round {r} {label:10s} {row['rps']:7.1f} req/s  {row['requests']} requests ({row['non_2xx']} "
                      f"non-2xx)  CPU/request {row['cpu_ms']:.3f} ms (system {row['sys_ms']:.3f})  "
                      f"load {row['load']:.2f}", flush=True)
    finally:
        stop(up)
    for label, values in results.items():
        ordered = sorted(values)
        print(f"{label:10s} " + " ".join(f"{v:.3f}" for v in values) + f"  median {ordered[len(ordered) // 2]:.3f} ms")


if __name__ == "__main__":
    main()
