"""Evidence log figures: proofs on a 10M-leaf tree, building trees, gateway CPU with the tree on.

    python benchmarks/bench_evidence.py proofs [--leaves 10000000] [--pairs 1000] [--inclusions 10000]
    python benchmarks/bench_evidence.py build --db STORE.duckdb        # tree over a real store
    python benchmarks/bench_evidence.py replicate --src STORE.duckdb --out BIG.duckdb --copies 5
    python benchmarks/bench_evidence.py build-synthetic [--leaves 1000000]
    python benchmarks/bench_evidence.py gateway [--duration 10] [--rounds 3]
    python benchmarks/bench_evidence.py add [--n 30000]                # CPU per leaf on the request path

``proofs``: builds the stored levels of a tree of N synthetic leaves, then times consistency proofs
between random pairs of sizes (produced from the levels and verified) and inclusion proofs for
10,000 random leaves (produced and verified). ``build``: ``evidence build`` on a copy of a store
(leaf commitments from every stored row, then the levels, written to the store). ``gateway``: two
gateways in front of one fixed upstream (``distillguard serve``), the same but for ``[evidence]``,
loaded at the same time by one wrk each (bench_gateway.py's method) for several rounds; CPU per
request of each process (user + system, all threads), compared round by round.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os

import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def synthetic_leaves(n: int) -> bytes:
    sha = hashlib.sha256
    return b"".join([sha(b"\x00" + i.to_bytes(8, "big")).digest() for i in range(n)])


def bench_proofs(args) -> dict:
    from distillguard.evidence.merkle import Levels, verify_consistency, verify_inclusion

    t0 = time.perf_counter()
    leaves = synthetic_leaves(args.leaves)
    t_leaves = time.perf_counter() - t0
    t0 = time.perf_counter()
    levels = Levels(leaves)
    t_levels = time.perf_counter() - t0
    del leaves
    rng = random.Random(7)
    n = levels.size
    roots = {}
    pairs = []
    for _ in range(args.pairs):
        a, b = sorted(rng.randint(1, n) for _ in range(2))
        pairs.append((a, b))
        for s in (a, b):
            if s not in roots:
                roots[s] = levels.root(s)
    times, cpu = [], []
    for a, b in pairs:
        t, c = time.perf_counter(), time.process_time()
        proof = levels.consistency_proof(a, b)
        ok = verify_consistency(a, b, proof, roots[a], roots[b])
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        assert ok
    root = levels.root()
    idx = [rng.randrange(n) for _ in range(args.inclusions)]
    t0, c0 = time.perf_counter(), time.process_time()
    for i in idx:
        assert verify_inclusion(levels.leaf(i), i, n, levels.inclusion_proof(i), root)
    t_incl, c_incl = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    for i in idx:
        levels.inclusion_proof(i)
    t_incl_only, c_incl_only = time.perf_counter() - t0, time.process_time() - c0
    times.sort()
    cpu.sort()
    return {"leaves": n, "leaf_hash_s": t_leaves, "levels_s": t_levels, "consistency_pairs": len(pairs),
            "consistency_ms_median": 1000 * statistics.median(times), "consistency_ms_max": 1000 * times[-1],
            "consistency_ms_p99": 1000 * times[int(0.99 * (len(times) - 1))],
            "consistency_cpu_ms_median": 1000 * statistics.median(cpu), "consistency_cpu_ms_max": 1000 * cpu[-1],
            "inclusions": len(idx), "inclusion_prove_and_verify_s": t_incl, "inclusion_prove_s": t_incl_only,
            "inclusion_prove_and_verify_cpu_s": c_incl, "inclusion_prove_cpu_s": c_incl_only,
            "load_average": os.getloadavg()[0]}


def replicate(args) -> dict:
    """A bigger store from a real one: ``copies`` copies of its rows, each with its own ids, accounts
    (suffix ``-rK``) and a 15-day shift, so the rows keep the real sizes and shapes."""
    from distillguard.events.columns import EVENT_SCHEMA
    from distillguard.store import EventStore

    t0 = time.perf_counter()
    src = str(args.src).replace("'", "''")
    with EventStore(args.out) as store:
        store.run(f"ATTACH '{src}' AS src (READ_ONLY)")
        for k in range(args.copies):
            cols = ", ".join(f"id || '-r{k}'" if c == "id" else f"ts + INTERVAL {15 * k} DAY" if c == "ts"
                             else f"account || '-r{k}'" if c == "account" else c for c in EVENT_SCHEMA.names)
            store.run(f"INSERT INTO events SELECT {cols} FROM src.events")
        events = store.count()
    return {"events": events, "seconds": time.perf_counter() - t0}


def bench_build_synthetic(args) -> dict:
    from distillguard.evidence.merkle import Levels

    leaves = synthetic_leaves(args.leaves)
    t0, c0 = time.perf_counter(), time.process_time()
    levels = Levels()
    for start in range(0, len(leaves), 32 * 20_000):   # appended in batches, as evidence build does
        levels.extend(leaves[start:start + 32 * 20_000])
    return {"leaves": levels.size, "levels_s": time.perf_counter() - t0, "levels_cpu_s": time.process_time() - c0,
            "load_average": os.getloadavg()[0]}


def bench_build(args) -> dict:
    from distillguard.evidence import treestore
    from distillguard.evidence.leaf import salt_key_from_private
    from distillguard.store import EventStore

    work = Path(tempfile.mkdtemp(prefix="dg-evbench-"))
    db = work / "store.duckdb"
    shutil.copy(args.db, db)
    try:
        with EventStore(db) as store:
            events = store.count()
            t0, c0 = time.perf_counter(), time.process_time()
            report = treestore.build(store, salt_key_from_private(b"\x01" * 32), "bench/store")
            total, cpu = time.perf_counter() - t0, time.process_time() - c0
            t0 = time.perf_counter()
            levels = treestore.load_levels(store, "bench/store")
            t_load = time.perf_counter() - t0
            assert levels.size == events
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"events": events, "build_s": total, "build_cpu_s": cpu, "events_per_s": events / total,
            "events_per_cpu_s": events / cpu, "reload_levels_s": t_load, "appended": report.appended,
            "load_average": os.getloadavg()[0]}


def bench_gateway(args) -> dict:
    import bench_gateway as bg

    from distillguard.intel.keys import SigningKey

    work = Path(tempfile.mkdtemp(prefix="dg-evbench-gw-"))
    keys = [f"sk-bench-{i:06d}" for i in range(args.accounts)]
    keys_path = work / "keys.json"
    keys_path.write_text(json.dumps({k: f"bench-account-{i:06d}" for i, k in enumerate(keys)}))
    script = work / "post.lua"
    bg.wrk_script(script, keys)
    key_path = work / "signing.pem"
    key_path.write_bytes(SigningKey.generate().pem())
    upstream, up_url = bg.start_upstream(0.0)
    gateways = {}
    try:
        for name in ("off", "on"):
            d = work / name
            d.mkdir()
            config = d / "gateway.toml"
            config.write_text(f'[evidence]\nkey = "{key_path}"\ninterval_s = 5\n' if name == "on" else "")
            gateways[name] = start(bg, up_url, d, keys_path, config)
        cpu = {"off": [], "on": []}
        for name in ("off", "on"):
            bg.run_wrk(gateways[name][1], script, args.connections, 3)        # warm-up
        from concurrent.futures import ThreadPoolExecutor

        # Both gateways loaded at the same time, by one wrk each, so both see the same machine (the
        # shared box's load swings more between runs than the effect being measured).
        with ThreadPoolExecutor(2) as pool:
            for _ in range(args.rounds):
                c0 = {name: bg.cpu_seconds(proc) for name, (proc, _) in gateways.items()}
                futures = {name: pool.submit(bg.run_wrk, url, script, args.connections // 2, args.duration, 1)
                           for name, (_, url) in gateways.items()}
                for name, fut in futures.items():
                    res = fut.result()
                    cpu[name].append((bg.cpu_seconds(gateways[name][0]) - c0[name]) / res["requests"] * 1000)
    finally:
        for proc, _ in gateways.values():
            bg.stop(proc)
        bg.stop(upstream)
    from distillguard.evidence.gateway_tree import read_leaves, read_notes

    leaves = len(read_leaves(work / "on" / "log"))
    notes = len(read_notes(work / "on" / "log"))
    shutil.rmtree(work, ignore_errors=True)
    off, on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
    paired = [b / a - 1 for a, b in zip(cpu["off"], cpu["on"])]     # each round: the two loaded together
    return {"rounds": args.rounds, "cpu_ms_off": cpu["off"], "cpu_ms_on": cpu["on"], "median_off": off,
            "median_on": on, "overhead_of_medians": on / off - 1, "paired_overheads": paired,
            "median_paired_overhead": statistics.median(paired), "leaves": leaves, "checkpoints": notes,
            "load_average": os.getloadavg()[0]}


def bench_add(args) -> dict:
    """CPU per leaf for an exchange shaped like the gateway benchmark's (short prompt, the fixed
    upstream's answer, the gateway's extras): ``prepare`` on the request path, ``add_logged`` in the
    log's writer thread once the record is written, and the two together."""
    import uuid

    from distillguard.evidence.gateway_tree import GatewayTree
    from distillguard.intel.keys import SigningKey
    from distillguard.serve.fixed import DEFAULT_TEXT

    tree = GatewayTree(tempfile.mkdtemp(prefix="dg-evbench-add-"), "bench/gw", SigningKey.generate())
    usage = {"prompt_tokens": 20, "completion_tokens": 50, "total_tokens": 70}
    event = {"id": uuid.uuid4().hex, "ts": time.time(), "account": "bench-account-000001", "key": "key-0123456789ab",
             "endpoint": "/v1/chat/completions", "model": "m", "ip": "127.0.0.1", "user_agent": "wrk", "status": 200,
             "request": {"model": "m", "max_tokens": 256, "messages": [
                 {"role": "user", "content": "Summarise the causes of the French Revolution in five bullet points. (7)"}]},
             "response": {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": DEFAULT_TEXT},
                                       "finish_reason": "stop"}], "usage": usage},
             "usage": usage, "decision": {"action": "allow", "codes": [], "enforced": False, "score": 0.1},
             "latency_ms": 1.2, "upstream_ms": 0.9, "cohort": "cohort-3"}
    runs, request_path, writer = [], [], []
    for _ in range(3):
        c0 = time.process_time()
        prepared = []
        for i in range(args.n):
            event["id"] = f"{i:032x}"
            event["account"] = f"bench-account-{i % 1000:06d}"
            prepared.append(tree.prepare(event))      # the request path's share
        c1 = time.process_time()
        for k in range(0, args.n, 32):                # the log writer's share, in commit-sized batches
            tree.add_logged(prepared[k:k + 32])
        c2 = time.process_time()
        request_path.append((c1 - c0) / args.n * 1e6)
        writer.append((c2 - c1) / args.n * 1e6)
        runs.append((c2 - c0) / args.n * 1e6)
    return {"adds": args.n, "cpu_us_per_add": runs, "median_cpu_us": statistics.median(runs),
            "request_path_cpu_us": statistics.median(request_path), "writer_thread_cpu_us": statistics.median(writer),
            "load_average": os.getloadavg()[0]}


def start(bg, upstream: str, work: Path, keys: Path, config: Path):
    import subprocess

    port = bg.free_port()
    proc = subprocess.Popen(bg.CLI + ["gateway", "--config", str(config), "--upstream", upstream, "--port", str(port),
                                      "--keys", str(keys), "--db", str(work / "events.duckdb"), "--log-dir",
                                      str(work / "log"), "--mode", "shadow"],
                            stdout=subprocess.DEVNULL, stderr=open(work / "gateway.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    bg.wait_ready(url + "/healthz", proc)
    return proc, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("proofs")
    p.add_argument("--leaves", type=int, default=10_000_000)
    p.add_argument("--pairs", type=int, default=1000)
    p.add_argument("--inclusions", type=int, default=10_000)
    p = sub.add_parser("build")
    p.add_argument("--db", type=Path, required=True)
    p = sub.add_parser("replicate")
    p.add_argument("--src", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--copies", type=int, default=5)
    p = sub.add_parser("build-synthetic")
    p.add_argument("--leaves", type=int, default=1_000_000)
    p = sub.add_parser("add")
    p.add_argument("--n", type=int, default=30_000)
    p = sub.add_parser("gateway")
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--accounts", type=int, default=1000)
    args = parser.parse_args()
    fn = {"proofs": bench_proofs, "build": bench_build, "build-synthetic": bench_build_synthetic,
          "gateway": bench_gateway, "add": bench_add, "replicate": replicate}[args.what]
    result = fn(args)
    print(json.dumps(result, indent=1, default=float))



if __name__ == "__main__":
    main()
