"""Intel exchange targets: import and match 100,000 indicators against 1M accounts' identifiers
(≤ 30 s), and the TAXII objects endpoint serving 10,000 objects with paging under load from a
second process.

Usage: .venv/bin/python benchmarks/bench_intel.py [--accounts 1000000] [--indicators 100000]
                                                  [--objects 10000] [--clients 4] [--seconds 20]
                                                  [--workdir /tmp/dg-bench-intel] [--phases match,taxii]

Setup is not timed: a store of ``--accounts`` accounts (one event each: e-mail, payment
fingerprint, organisation e-mail domain, IPv4) is written straight into DuckDB, and lab A signs
a bundle of ``--indicators`` identifier indicators (e-mail, payment, IP /24 hashes; 10 % of them
hash identifiers that lab B's accounts really use). Timed: lab B's ``intel import`` of the bundle
(stream, verify the signature, check and store every object in one transaction), then matching
every account's hashed identifiers against the active indicators (what ``intel scan`` adds).

The TAXII phase starts ``distillguard intel serve`` as its own process over a collection of
``--objects`` objects, then ``--clients`` threads of this process each page through the whole
collection (``limit=1000``) again and again for ``--seconds``; every pass is checked to return
every object exactly once.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import duckdb
import httpx
import numpy as np
import orjson

from distillguard.gateway.server import free_port
from distillguard.intel.home import IntelHome, Peer, secret_sha256
from distillguard.intel.identifiers import hash_values
from distillguard.intel.importer import import_bundle
from distillguard.intel.keys import CommunityKey, public_key_text
from distillguard.intel.match import IntelSignal
from distillguard.intel.publish import sign_and_publish
from distillguard.intel.store import IntelStore
from distillguard.intel.taxii import TAXII

SECRET = "bench-peer-secret-0123456789"


def homes(work: Path) -> tuple[IntelHome, IntelHome]:
    key = CommunityKey.generate()
    a = IntelHome.init(work / "home-a", "Lab A", key)
    b = IntelHome.init(work / "home-b", "Lab B", key)
    b.add_peer(Peer(name="lab-a", public_key=public_key_text(a.signing_key().public)))
    b.save()
    a.add_peer(Peer(name="lab-b", public_key=public_key_text(b.signing_key().public),
                    server_secret_sha256=secret_sha256(SECRET), read=["shared"]))
    a.save()
    return a, b


def build_accounts(db: Path, n: int) -> None:
    con = duckdb.connect(str(db))
    con.execute(f"""CREATE TABLE events AS SELECT
        'acct_' || i AS account, TIMESTAMP '2026-10-05' + to_seconds(i % 86400) AS ts,
        json_object('email', 'user' || i || '@org' || (i % 50000) || '.example',
                    'payment', 'card_' || left(md5(i::VARCHAR), 12)) AS identity,
        (10 + i % 200) || '.' || (i // 200 % 256) || '.' || (i // 51200 % 256) || '.7' AS ip
        FROM range({n}) t(i)""")
    con.close()


def build_bundle(home: IntelHome, n: int, accounts: int, out: Path, rng: np.random.Generator) -> int:
    """n indicators: 50 % e-mail, 30 % payment, 20 % /24; 10 % hash real identifiers of the store
    (every account has its own e-mail, card and /24, so each planted indicator matches one account)."""
    key = home.community_key()
    real = n // 10
    picks = rng.choice(accounts, size=real, replace=False)
    kinds = np.array(["email"] * (n // 2) + ["payment"] * (3 * n // 10) + ["ip24"] * (n - n // 2 - 3 * n // 10))
    rng.shuffle(kinds)
    hashes = [os.urandom(32).hex() for _ in range(n)]
    for j, i in enumerate(picks):
        kind = kinds[j]
        raw = {"email": f"user{i}@org{i % 50000}.example", "payment": None,
               "ip24": f"{10 + i % 200}.{i // 200 % 256}.{i // 51200 % 256}.0/24"}[kind]
        if kind == "payment":
            raw = "card_" + hashlib.md5(str(i).encode()).hexdigest()[:12]
        hashes[j] = hash_values(key, kind, [raw])[0]
    props = {"email": ("email-addr", "x_hmac_sha256"), "payment": ("user-account", "x_payment_hmac_sha256"),
             "ip24": ("ipv4-addr", "x_prefix_hmac_sha256")}
    now = "2026-11-01T00:00:00.000Z"
    objects = [{"type": "indicator", "spec_version": "2.1", "id": f"indicator--{uuid.uuid4()}", "created": now,
                "modified": now, "created_by_ref": home.identity_id, "name": "bench indicator",
                "indicator_types": ["malicious-activity"], "pattern_type": "stix",
                "pattern": f"[{props[k][0]}:{props[k][1]} = '{h}']", "valid_from": now,
                "valid_until": "2099-01-01T00:00:00.000Z", "confidence": 80, "x_distillguard_kind": str(k),
                "x_distillguard_key_id": key.key_id} for k, h in zip(kinds, hashes)]
    bundle = {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": objects}
    sign_and_publish(bundle, home, None, valid_days=30, out=out)
    return real


def phase_match(work: Path, accounts: int, indicators: int) -> None:
    home_a, home_b = homes(work)
    db = work / "accounts.duckdb"
    t = time.perf_counter()
    build_accounts(db, accounts)
    bundle = work / "bundle.json"
    expected = build_bundle(home_a, indicators, accounts, bundle, np.random.default_rng(1))
    print(f"setup: {accounts:,} accounts, {indicators:,} signed indicators "
          f"({bundle.stat().st_size / 1e6:,.0f} MB) in {time.perf_counter() - t:.1f} s (not timed)")
    t0 = time.perf_counter()
    with IntelStore(home_b.db_path) as store:
        result = import_bundle(bundle, home_b, store)
    t1 = time.perf_counter()
    con = duckdb.connect(str(db), read_only=True)
    signal = IntelSignal(home_b)
    found = signal.evaluate(con)
    t2 = time.perf_counter()
    con.close()
    matched = sum(len(v.matches) for v in found.values())
    print(f"import: {result.indicators:,} indicators verified and stored in {t1 - t0:.1f} s "
          f"({result.indicators / (t1 - t0):,.0f}/s)")
    print(f"match: {accounts:,} accounts' identifiers hashed and joined in {t2 - t1:.1f} s; "
          f"{matched:,} matches on {len(found):,} accounts (expected {expected:,})")
    print(f"TOTAL import + match: {t2 - t0:.1f} s (target ≤ 30 s); peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")
    if matched != expected:
        sys.exit("match count differs from the planted matches")


def _client(url: str, headers: dict, objects: int, deadline: float, stats: dict, lock: threading.Lock) -> None:
    with httpx.Client(headers=headers, timeout=60.0) as client:
        for _ in range(100_000):   # bounded; the deadline ends it first
            if time.monotonic() > deadline:
                return
            seen: set[str] = set()
            params: dict = {"limit": 1000}
            for _ in range(10_000):
                t = time.perf_counter()
                r = client.get(url, params=params)
                latency = time.perf_counter() - t
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
                env = orjson.loads(r.content)
                seen.update(o["id"] for o in env.get("objects", []))
                with lock:
                    stats["pages"].append(latency)
                    stats["objects"] += len(env.get("objects", []))
                if not env.get("more"):
                    break
                params["next"] = env["next"]
            with lock:
                stats["passes"] += 1
                stats["complete"] += len(seen) == objects


def phase_taxii(work: Path, objects: int, clients: int, seconds: float) -> None:
    home_a, _ = homes(work / "taxii")
    now = "2026-11-01T00:00:00.000Z"
    batch = [{"type": "indicator", "spec_version": "2.1", "id": f"indicator--{uuid.uuid4()}", "created": now,
              "modified": now, "created_by_ref": home_a.identity_id, "pattern_type": "stix",
              "pattern": f"[email-addr:x_hmac_sha256 = '{os.urandom(32).hex()}']", "valid_from": now,
              "confidence": 80} for _ in range(objects)]
    with IntelStore(home_a.db_path) as store:
        sign_and_publish({"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": batch[:-1]}, home_a, store,
                         valid_days=30)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "distillguard", "intel", "serve", "--port", str(port),
                               "--home", str(home_a.path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        headers = {"Accept": TAXII, "Authorization": f"Bearer {SECRET}"}
        for _ in range(300):
            try:
                if httpx.get(f"{base}/taxii2/", headers=headers).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        cid = home_a.collections["shared"]["id"]
        url = f"{base}/api1/collections/{cid}/objects/"
        stats = {"pages": [], "objects": 0, "passes": 0, "complete": 0}
        lock = threading.Lock()
        deadline = time.monotonic() + seconds
        t0 = time.perf_counter()
        threads = [threading.Thread(target=_client, args=(url, headers, objects, deadline, stats, lock))
                   for _ in range(clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=seconds + 120)
        elapsed = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(timeout=30)
    pages = np.array(stats["pages"]) * 1000
    print(f"TAXII: {objects:,} objects in a collection, served by 'intel serve' (own process) to {clients} "
          f"concurrent clients in another process for {elapsed:.1f} s")
    print(f"  {stats['passes']:,} full paged pulls ({stats['complete']:,} returned every object exactly once), "
          f"{len(pages):,} pages of 1,000, {stats['objects'] / elapsed:,.0f} objects/s, "
          f"{stats['passes'] / elapsed:.2f} full pulls/s")
    print(f"  page latency p50 {np.percentile(pages, 50):.0f} ms, p99 {np.percentile(pages, 99):.0f} ms, "
          f"max {pages.max():.0f} ms")
    if stats["complete"] != stats["passes"] or not stats["passes"]:
        sys.exit("a paged pull missed or repeated objects")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--indicators", type=int, default=100_000)
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workdir", default="/tmp/dg-bench-intel")
    parser.add_argument("--phases", default="match,taxii")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    phases = set(args.phases.split(","))
    if "match" in phases:
        phase_match(work, args.accounts, args.indicators)
    if "taxii" in phases:
        phase_taxii(work, args.objects, args.clients, args.seconds)


if __name__ == "__main__":
    main()
