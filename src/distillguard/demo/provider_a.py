"""Demo steps 1-4 at provider A: traffic lab, store, bad input, scan."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

from distillguard.events.jsonl import Quarantine
from distillguard.lab.traffic import TrafficConfig, generate
from distillguard.store import EventStore
from distillguard.store.ingest import ingest_paths


def run_provider_a(out: Path, console: Console, *, seed: int, step) -> dict:
    """Steps 1-4 at provider A: lab traffic, the store, bad input, the scan."""
    step("[bold]1. Traffic lab at provider A[/bold]: organic users from real ShareGPT conversations + extraction campaigns")
    summary = generate(TrafficConfig(seed=seed, accounts=80, days=3, batch_per_day=600), out / "lab")
    console.print(f"{summary.events:,} events from {summary.accounts} accounts → {summary.events_path}")

    step("[bold]2. Store[/bold]: ingest into DuckDB (idempotent), export Parquet by day")
    db = out / "events.duckdb"
    with EventStore(db) as store:
        first = ingest_paths(store, [summary.events_path])
        again = ingest_paths(store, [summary.events_path])
        files = store.export_parquet(out / "parquet")
        labels = [orjson.loads(line) for line in summary.labels_path.read_bytes().splitlines()]
        store.con.register("_labels", __import__("pyarrow").Table.from_pylist(
            [{"account": r["account"], "strategy": r["strategy"], "kind": r["kind"]} for r in labels]))
        rows = store.run(
            "SELECT l.kind, l.strategy, count(DISTINCT e.account), count(*), sum(e.completion_tokens), "
            "round(avg(CASE WHEN e.n_turns = 1 THEN 1 ELSE 0 END), 2) "
            "FROM events e JOIN _labels l USING (account) GROUP BY 1, 2 ORDER BY 1 DESC, 4 DESC")
    console.print(f"first ingest: {first.inserted:,} new; second ingest of the same file: {again.inserted:,} new "
                  f"({again.read - again.inserted:,} duplicates skipped); {len(files)} Parquet partitions")
    table = Table(title="traffic by ground-truth strategy (labels are kept apart from events)")
    for col in ("kind", "strategy", "accounts", "queries", "completion tokens", "single-turn share"):
        table.add_column(col, justify="left" if col in ("kind", "strategy") else "right")
    for kind, strategy, accounts, queries, tokens, single in rows:
        table.add_row(kind, strategy, f"{accounts:,}", f"{queries:,}", f"{int(tokens or 0):,}", f"{single:.2f}")
    console.print(table)

    step("[bold]3. Bad input[/bold]: a damaged log is quarantined, nothing silently lost")
    damaged = out / "damaged.jsonl.gz"
    with gzip.open(summary.events_path, "rb") as src, gzip.open(damaged, "wb") as dst:
        for i, line in enumerate(src):
            if i == 5:
                dst.write(b'{"ts": "2026-10-05T00:00:00Z", "account": 42, "request": {}}\n')
            if i == 9:
                dst.write(b'{"ts": "yesterday", "account": \n')
            if i >= 20:
                break
            dst.write(line)
    with EventStore(":memory:") as scratch, Quarantine(out / "damaged.quarantine.jsonl") as q:
        report = ingest_paths(scratch, [damaged], quarantine=q)
    console.print(f"{report.read:,} good events loaded, {report.bad} bad lines quarantined → {q.path}")
    for line in (out / "damaged.quarantine.jsonl").read_bytes().splitlines():
        rec = orjson.loads(line)
        console.print(f"  line {rec['line']}: field {rec['field']!r}: {rec['error']}")

    step("[bold]4. Scan[/bold]: per-account signals calibrated against organic traffic, hydra clusters")
    from distillguard.detect.scan import ScanOptions, scan_store
    from distillguard.report.scan_html import write_scan_html

    with EventStore(db, read_only=True) as store:
        result = scan_store(store, ScanOptions())
    truth = {r["account"]: r for r in labels}
    table = Table(title="flagged accounts (ground truth shown for the demo only)")
    for col in ("truth", "queries", "cluster"):
        table.add_column(col, no_wrap=True, min_width=max(len(col), 12 if col == "truth" else 0))
    table.add_column("strongest reason", overflow="fold")
    flagged = sorted((a for a in result.accounts if a.flagged), key=lambda a: a.verdict.p_value)
    shown_clusters: set[str] = set()
    for a in flagged:
        if a.cluster and a.cluster in shown_clusters:
            continue  # one row per cluster is enough here
        if a.cluster:
            shown_clusters.add(a.cluster)
        reason = a.to_dict()["reasons"][0]["detail"] if a.verdict.reasons or a.cluster_flagged else ""
        table.add_row(truth[a.account]["strategy"], f"{a.queries:,}", a.cluster or "", reason)
    console.print(table)
    organic_flagged = [a for a in flagged if truth[a.account]["kind"] == "organic"]
    extraction = [r["account"] for r in labels if r["kind"] == "extraction"]
    caught = sum(1 for acct in extraction if any(a.account == acct for a in flagged))
    s = result.summary()
    console.print(f"caught {caught}/{len(extraction)} extraction accounts; {len(organic_flagged)} organic accounts "
                  f"flagged (of {sum(1 for r in labels if r['kind'] == 'organic')}); "
                  f"{s['campaigns']} campaigns, {s['tokens_extracted']:,} output tokens extracted "
                  f"(≈ ${s['estimated_cost_usd']:,.2f})")
    write_scan_html(result, out / "scan.html")
    console.print(f"HTML report → {out / 'scan.html'}")

    return {"events": summary.events, "inserted": first.inserted, "duplicates_second": again.read - again.inserted,
            "quarantined": report.bad, "caught": caught, "extraction_accounts": len(extraction),
            "organic_flagged": len(organic_flagged), "events_path": summary.events_path, "db": db,
            "scan": result.to_dict(), "truth": truth}
