"""Scan speed and memory on a large store (default: the 1M-event store bench_ingest.py builds).

Usage: .venv/bin/python benchmarks/bench_scan.py [--db /tmp/dg-bench/events.duckdb] [--minilm-sample 2000]

Runs `scan` with the hashing features in a child process (its peak RSS is its own), then
measures all-MiniLM-L6-v2 throughput on real prompts from the store and works out what the same
scan would cost with MiniLM embedding every account's coverage sample.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def child_scan(db: str, engine: str) -> dict:
    import resource

    from distillguard.detect.scan import ScanOptions, scan_paths

    t0 = time.perf_counter()
    result = scan_paths([db], ScanOptions(engine=engine, workers=os.cpu_count() or 1))
    elapsed = time.perf_counter() - t0
    events = int(result.features["queries"].sum())
    samples = int(sum(min(int(d), 300) for d in result.features["distinct_prompts"] if d >= 50))
    return {"seconds": elapsed, "events": events, "accounts": len(result.accounts),
            "flagged_accounts": [a.account for a in result.accounts if a.flagged],
            "scanned_accounts": [a.account for a in result.accounts],
            "flagged": sum(a.flagged for a in result.accounts), "clusters": len(result.clusters),
            "coverage_samples": samples, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", default="/tmp/dg-bench/events.duckdb")
    parser.add_argument("--engine", default="local")
    parser.add_argument("--minilm-sample", type=int, default=2000)
    args = parser.parse_args()
    if not Path(args.db).exists():
        sys.exit(f"{args.db} not found: run benchmarks/bench_ingest.py first")
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_scan as b; "
            f"print('RESULT ' + json.dumps(b.child_scan({args.db!r}, {args.engine!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(proc.stderr)
    r = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    print(f"scan ({args.engine}, hashing features): {r['events']:,} events, {r['accounts']:,} accounts in "
          f"{r['seconds']:.1f} s = {r['events'] / r['seconds']:,.0f} events/s; peak RSS {r['peak_rss_mb']:,.0f} MB; "
          f"{r['flagged']} flagged, {r['clusters']} clusters")

    labels_path = Path(args.db).parent / "lab" / "labels.jsonl"
    if labels_path.exists():
        import collections

        labels = [json.loads(line) for line in labels_path.read_text().splitlines() if line.strip()]
        flagged = set(r["flagged_accounts"])
        scanned = set(r["scanned_accounts"])
        kinds = collections.defaultdict(lambda: [0, 0])
        for row in (row for row in labels if row["account"] in scanned):
            kinds[row["strategy"]][0] += 1
            kinds[row["strategy"]][1] += row["account"] in flagged
        print("ground truth (labels.jsonl): " + ", ".join(
            f"{k} {flagged_n}/{n} flagged" for k, (n, flagged_n) in sorted(kinds.items())))

    from distillguard.detect.text import minilm_embeddings
    from distillguard.store import EventStore

    with EventStore(args.db, read_only=True) as store:
        prompts = [p for (p,) in store.run(f"SELECT prompt_text FROM events USING SAMPLE {args.minilm_sample} ROWS")]
    minilm_embeddings(prompts[:8])  # load the model outside the timing
    t0 = time.perf_counter()
    minilm_embeddings(prompts)
    rate = len(prompts) / (time.perf_counter() - t0)
    extra = r["coverage_samples"] / rate
    print(f"MiniLM: {rate:,.0f} prompts/s on real prompts; the scan embeds {r['coverage_samples']:,} coverage-sample "
          f"prompts, so with DISTILLGUARD_EMBEDDER=minilm it needs ~{extra / 60:,.0f} more minutes "
          f"(~{(r['seconds'] + extra) / 60:,.0f} min in all)")


if __name__ == "__main__":
    main()
