"""Benchmark for the foundation: generate N lab events, parse them, ingest them into DuckDB.

Usage:  .venv/bin/python benchmarks/bench_ingest.py [--events 1000000] [--workdir /tmp/dg-bench]

Each phase runs in its own process so its peak memory (max RSS) is its own. Prints one
Markdown table row per phase (events/s, MB/s of uncompressed JSON, peak RSS) for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PHASES = ("generate", "parse", "columns", "ingest")


def phase_generate(workdir: Path, events: int) -> dict:
    from distillguard.lab.traffic import TrafficConfig, generate

    # About 47 events per organic account over 14 days (power users included), plus ~60k from hard
    # negatives and campaigns.
    accounts = max(50, int((events - 60_000) / 47))
    t0 = time.perf_counter()
    summary = generate(TrafficConfig(seed=99, accounts=accounts, days=14), workdir / "lab")
    elapsed = time.perf_counter() - t0
    return {"events": summary.events, "seconds": elapsed, "accounts": summary.accounts}


def phase_parse(workdir: Path) -> dict:
    from distillguard.events.jsonl import ReadStats, iter_jsonl

    stats = ReadStats()
    t0 = time.perf_counter()
    n = sum(1 for _ in iter_jsonl(workdir / "lab" / "events.jsonl.gz", stats=stats))
    return {"events": n, "seconds": time.perf_counter() - t0}


def phase_columns(workdir: Path) -> dict:
    from distillguard.events.columns import batches_to_tables
    from distillguard.events.jsonl import iter_jsonl

    t0 = time.perf_counter()
    n = sum(t.num_rows for t in batches_to_tables(iter_jsonl(workdir / "lab" / "events.jsonl.gz")))
    return {"events": n, "seconds": time.perf_counter() - t0}


def phase_ingest(workdir: Path) -> dict:
    from distillguard.store import EventStore
    from distillguard.store.ingest import ingest_paths

    db = workdir / "events.duckdb"
    for p in (db, Path(str(db) + ".wal")):
        p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with EventStore(db) as store:
        report = ingest_paths(store, [workdir / "lab" / "events.jsonl.gz"])
    elapsed = time.perf_counter() - t0
    t1 = time.perf_counter()
    with EventStore(db) as store:
        again = ingest_paths(store, [workdir / "lab" / "events.jsonl.gz"])
    return {"events": report.inserted, "seconds": elapsed, "reingest_new": again.inserted,
            "reingest_seconds": time.perf_counter() - t1, "db_bytes": db.stat().st_size}


def run_child(phase: str, workdir: Path, events: int) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_ingest as b; "
            f"from pathlib import Path; "
            f"r = b.phase_{phase}(Path({str(workdir)!r}){', ' + str(events) if phase == 'generate' else ''}); "
            f"import resource; r['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; "
            f"print('RESULT ' + json.dumps(r))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"phase {phase} failed:\n{proc.stderr}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dg-bench"))
    parser.add_argument("--phases", default=",".join(PHASES))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = {}
    for phase in args.phases.split(","):
        results[phase] = run_child(phase, args.workdir, args.events)
        print(f"{phase}: {results[phase]}", flush=True)
    gz = args.workdir / "lab" / "events.jsonl.gz"
    raw_bytes = None
    if "parse" in results:
        from distillguard.events.jsonl import iter_lines

        raw_bytes = sum(len(line) for line in iter_lines(gz))
    print()
    print(f"cpu: {os.cpu_count()} cores; input {gz.stat().st_size / 1e6:.0f} MB gzip"
          + (f", {raw_bytes / 1e6:.0f} MB JSON ({raw_bytes / max(1, results['parse']['events']):.0f} B/event)"
             if raw_bytes else ""))
    print("| phase | events | seconds | events/s | MB/s (JSON) | peak RSS |")
    print("|---|---:|---:|---:|---:|---:|")
    for phase, r in results.items():
        rate = r["events"] / r["seconds"]
        mbs = f"{raw_bytes / r['seconds'] / 1e6:.0f}" if raw_bytes and phase != "generate" else "–"
        print(f"| {phase} | {r['events']:,} | {r['seconds']:.1f} | {rate:,.0f} | {mbs} | {r['peak_rss_mb']:,.0f} MB |")
    if "ingest" in results:
        r = results["ingest"]
        print(f"\nre-ingest of the same file: {r['reingest_new']} new rows in {r['reingest_seconds']:.1f} s; "
              f"DuckDB file {r['db_bytes'] / 1e6:,.0f} MB")


if __name__ == "__main__":
    main()
