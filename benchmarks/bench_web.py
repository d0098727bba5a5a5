"""Dashboard page speed on a large store: every page should take ≤ 500 ms server time.

Usage: .venv/bin/python benchmarks/bench_web.py [--db /tmp/dg-bench/events.duckdb] [--repeat 5]

The store is the 1M-event lab log of bench_ingest/bench_scan. Start-up (the scan and the
pre-aggregated tables, done once and on each re-scan) is timed separately; each page is then
fetched over loopback HTTP by a logged-in client, and the median and max wall time reported
(an upper bound on server time: it includes the loopback round trip and the client).

The dashboard is connected (--gateway) to a real gateway on loopback holding up to 200 appeals of
blocked flagged accounts, so the appeals page (one admin call to the gateway) and actions pushed
to the gateway are timed too.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from distillguard.detect.scan import ScanOptions
from distillguard.gateway.app import Gateway
from distillguard.gateway.app import build_app as build_gateway
from distillguard.gateway.config import load_config
from distillguard.gateway.server import ServerThread
from distillguard.serve.fixed import FixedCompletionServer
from distillguard.web.app import Dashboard, WebConfig, build_app
from distillguard.web.gateway import GatewayLink

PASSWORD = "benchmark password"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="/tmp/dg-bench/events.duckdb")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if not Path(args.db).exists():
        sys.exit(f"error: {args.db}: no such store (make one with benchmarks/bench_ingest.py)")
    admin = {"authorization": "Bearer bench-admin-token"}
    with tempfile.TemporaryDirectory() as tmp, ServerThread(FixedCompletionServer()) as upstream:
        cfg = load_config(None, upstream=upstream.url, admin_token="bench-admin-token")
        cfg.log.dir, cfg.log.sink = Path(tmp) / "gw-log", "none"
        gateway = ServerThread(build_gateway(Gateway(cfg)))
        gateway.start()
        started = time.perf_counter()
        dash = Dashboard(WebConfig(db=Path(args.db), state=Path(tmp) / "web.duckdb", password=PASSWORD,
                                   options=ScanOptions(workers=args.workers),
                                   gateway=GatewayLink(gateway.url, "bench-admin-token")))
        startup = time.perf_counter() - started
        snap = dash.snapshot
        accounts = snap.data["accounts"]
        flagged = next(a["account"] for a in accounts if a["flagged"])
        busiest = max(accounts, key=lambda a: a["queries"])["account"]
        cluster = snap.data["clusters"][0]["cluster"] if snap.data["clusters"] else None
        print(f"start-up (scan + aggregates): {startup:.1f} s for {snap.events:,} events, {len(accounts):,} accounts")
        appellants = [a["account"] for a in accounts if a["flagged"]][:200]
        with httpx.Client(base_url=gateway.url, timeout=60) as gw:   # up to 200 blocked flagged accounts appeal
            for i, a in enumerate(appellants):
                gw.post("/admin/keys", json={"key": f"sk-bench-{i:06d}", "account": a}, headers=admin)
                gw.post(f"/admin/accounts/{a}/action", json={"action": "block"}, headers=admin)
                gw.post("/v1/appeals", json={"message": f"appeal {i}: we are a research group"},
                        headers={"authorization": f"Bearer sk-bench-{i:06d}"})
        with ServerThread(build_app(dash.config, dash)) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
            token = re.search(r"name=csrf value='([^']+)'", client.get("/login").text).group(1)
            client.post("/login", data={"csrf": token, "password": PASSWORD})
            csrf = re.search(r"name=csrf value='([^']+)'", client.get("/audit").text).group(1)
            for i in range(20):  # an audit log with some history
                client.post("/actions", data={"csrf": csrf, "target_kind": "account", "target": flagged,
                                              "action": "throttle", "note": f"bench {i}"})
            t = time.perf_counter()
            client.post("/actions", data={"csrf": csrf, "target_kind": "account", "target": flagged,
                                          "action": "block", "note": "bench push"})
            print(f"block pushed to the gateway: {(time.perf_counter() - t) * 1000:.0f} ms "
                  f"({dash.actions.entries(limit=1)[0]['pushed']})")
            pages = {"/accounts": "ranked accounts", "/clusters": "clusters", "/audit": "audit log",
                     "/appeals": f"appeals ({len(appellants)}, read from the gateway)",
                     f"/accounts/{flagged}": "flagged account", f"/accounts/{busiest}": "busiest account",
                     "/accounts/nobody": "404"}
            if cluster:
                pages[f"/clusters/{cluster}"] = "cluster"
            print("| page | median ms | max ms | bytes |\n|---|---:|---:|---:|")
            for path, name in pages.items():
                times = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    reply = client.get(path)
                    times.append((time.perf_counter() - t) * 1000)
                print(f"| {name} | {statistics.median(times):.0f} | {max(times):.0f} | {len(reply.content):,} |")
            t = time.perf_counter()
            client.post("/refresh", data={"csrf": csrf})
            answered = time.perf_counter() - t
            during = []
            while dash.refreshing:  # pages keep serving the old snapshot meanwhile
                t1 = time.perf_counter()
                client.get("/accounts")
                during.append((time.perf_counter() - t1) * 1000)
                time.sleep(1.0)
            print(f"re-scan: answered in {answered * 1000:.0f} ms, done after {time.perf_counter() - t:.1f} s; "
                  f"/accounts meanwhile: median {statistics.median(during or [0]):.0f} ms, "
                  f"max {max(during or [0]):.0f} ms")
        gateway.stop()


if __name__ == "__main__":
    main()
