"""`distillguard demo`: the story end to end on embedded defaults (grows as capabilities land)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import orjson
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from distillguard.events.jsonl import Quarantine
from distillguard.lab.traffic import TrafficConfig, generate
from distillguard.store import EventStore
from distillguard.store.ingest import ingest_paths


def run_demo(out: Path, *, seed: int = 7, console: Console | None = None) -> dict:
    console = console or Console()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    console.rule("[bold]1. Traffic lab[/bold]: organic users from real ShareGPT conversations + extraction campaigns")
    summary = generate(TrafficConfig(seed=seed, accounts=80, days=3, batch_per_day=600), out / "lab")
    console.print(f"{summary.events:,} events from {summary.accounts} accounts → {summary.events_path}")

    console.rule("[bold]2. Store[/bold]: ingest into DuckDB (idempotent), export Parquet by day")
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

    console.rule("[bold]3. Bad input[/bold]: a damaged log is quarantined, nothing silently lost")
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

    console.rule("[bold]4. Scan[/bold]: per-account signals calibrated against organic traffic, hydra clusters")
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

    console.rule("[bold]5. Gateway[/bold]: day one of the same traffic, live, through the enforcing proxy")
    gateway = run_gateway_demo(out, summary.events_path, truth, console)

    console.rule("[bold]6. Watermarks[/bold]: each account's answers carry its cohort's key; detection names it")
    watermark = run_watermark_demo(out, console, seed=seed)

    console.rule("[bold]7. Evidence[/bold]: a signed, witnessed package for the biggest campaign, verified offline")
    from distillguard.evidence.demo import export_and_verify_biggest

    evidence = export_and_verify_biggest(db, result.to_dict(), out, console=console)
    return {"evidence": evidence, "events": summary.events, "inserted": first.inserted, "duplicates_second": again.read - again.inserted,
            "quarantined": report.bad, "caught": caught, "extraction_accounts": len(extraction),
            "organic_flagged": len(organic_flagged), "gateway": gateway, "watermark": watermark}


def run_watermark_demo(out: Path, console: Console, seed: int = 7) -> dict:
    """Serve a watermarked model over loopback HTTP, ask as three accounts, detect the cohorts."""
    import hashlib

    import httpx
    import torch

    from distillguard.gateway.server import ServerThread
    from distillguard.lab.tinylm import build_model, default_model_dir
    from distillguard.serve.hf import HFModelServer
    from distillguard.watermark.detect import TextRecord, detect
    from distillguard.watermark.keys import KeySet

    work = out / "watermark"
    model_dir = default_model_dir()
    if not (model_dir / "config.json").exists():
        model_dir = work / "model"
        with console.status("training a small model for the demo (the full default: 'distillguard lab build-model')…",
                            spinner="dots"):
            build_model(model_dir, seconds=20, vocab_size=1024, max_chars=400_000)
    # A demo key from the seed, so the demo is repeatable (real keys: 'distillguard watermark keygen').
    keys = KeySet(secret=hashlib.sha256(f"distillguard-demo-{seed}".encode()).digest(), cohorts=8)
    keys.save(work / "keys.json")
    torch.manual_seed(seed)
    server = HFModelServer(model_dir, keys=keys)
    accounts = {"farm-17": None, "alice": None, "bob (routed to 'watch' by the gateway)": "watch"}
    answers: dict[str, list[str]] = {a: [] for a in accounts}
    with ServerThread(server) as up, httpx.Client(base_url=up.url, timeout=120) as client:
        with console.status("asking the watermarked model as three accounts…", spinner="dots"):
            for account, routed in accounts.items():
                headers = {"x-distillguard-account": account.split()[0]}
                if routed:
                    headers["x-distillguard-cohort"] = routed
                for i in range(5):
                    r = client.post("/v1/chat/completions", headers=headers, json={
                        "max_tokens": 80, "messages": [{"role": "user", "content": f"Explain topic number {i}."}]})
                    r.raise_for_status()
                    answers[account].append(r.json()["choices"][0]["message"]["content"])
    clean = HFModelServer(model_dir, keys=None)
    answers["(unwatermarked model)"] = [clean.generate(f"User: Explain topic number {i}.\nAssistant:", max_tokens=80,
                                                       temperature=1.0, top_p=1.0, account="x")[0] for i in range(5)]
    vocab = server.model.config.vocab_size
    table = Table(title=f"watermark detection on 5 answers per account ({keys.total} cohort keys, Bonferroni)",
                  box=box.SIMPLE_HEAD)
    for col in ("account", "its cohort", "detected", "p-value"):
        table.add_column(col, justify="left" if col == "account" else "right")
    results = {}
    for account, texts in answers.items():
        top = detect([TextRecord(i + 1, f"{account}-{i}", text=t) for i, t in enumerate(texts)], keys, vocab,
                     server.tokenizer)["cohorts"][0]
        routed = accounts.get(account)
        expected = (None if account.startswith("(") else
                    keys.label(keys.cohort_index(routed)) if routed else keys.label(keys.cohort_of(account.split()[0])))
        found = top["label"] if top["p_value_corrected"] < 1e-3 else None
        results[account] = {"expected": expected, "detected": found, "p_value": top["p_value_corrected"]}
        table.add_row(escape(account), expected or "—", found or "none", f"{top['p_value_corrected']:.1e}")
    console.print(table)
    console.print(f"keys → {work / 'keys.json'}. Was a suspect model trained on these answers? See "
                  "'distillguard watermark radioactivity' and docs/watermarks.md.")
    return results


DEMO_POLICY = """
# The default graduated rules, with a tight token budget for accounts flagged on coverage alone
# (so the demo's slow-paced bots visibly hit it).
[policy.limits]
requests_per_minute = 60

[[policy.rules]]
name = "flagged_elicitation"
when = "flagged"
evidence = "elicitation"
actions = ["block"]

[[policy.rules]]
name = "cluster_flagged"
when = "cluster_flagged"
actions = ["block"]

[[policy.rules]]
name = "flagged_persistent"
when = "flagged"
min_queries = 1000
actions = ["block"]

[[policy.rules]]
name = "flagged_coverage"
when = "flagged"
actions = ["throttle", "strip_logprobs", "strip_reasoning", "cap_max_tokens", "cohort"]
tokens_per_minute = 100
max_tokens = 512
cohort = "watch"

[[policy.rules]]
name = "elevated"
when = "elevated"
actions = ["throttle", "strip_logprobs", "strip_reasoning", "cap_max_tokens", "cohort"]
tokens_per_minute = 300
max_tokens = 1024
cohort = "watch"
"""


def run_gateway_demo(out: Path, events_path: Path, truth: dict, console: Console, hours: float = 24.0) -> dict:
    """Replay the first ``hours`` of lab traffic over loopback HTTP: lab → gateway → fixed upstream."""
    import asyncio
    from collections import Counter

    import httpx

    from distillguard.gateway.app import Gateway, build_app
    from distillguard.gateway.config import load_config
    from distillguard.gateway.replay import keys_for, load_events, replay
    from distillguard.gateway.server import ServerThread
    from distillguard.serve.fixed import DEFAULT_TEXT, FixedCompletionServer

    events = load_events(events_path)
    events = [e for e in events if e["ts_epoch"] < events[0]["ts_epoch"] + hours * 3600]
    work = out / "gateway"
    work.mkdir(parents=True, exist_ok=True)
    (work / "keys.json").write_bytes(orjson.dumps(keys_for(events)))
    (work / "gateway.toml").write_text(DEMO_POLICY)
    cfg = load_config(work / "gateway.toml", keys=work / "keys.json", db=work / "events.duckdb",
                      upstream="http://127.0.0.1:1", trust_client_timestamps=True, trust_forwarded_for=True)
    cfg.log.dir = work / "log"
    long_answer = " ".join([DEFAULT_TEXT] * 12)      # ~600 tokens: a full answer, as a model would give
    with ServerThread(FixedCompletionServer(text=long_answer)) as upstream:
        cfg.upstream = upstream.url
        gw = Gateway(cfg)
        with ServerThread(build_app(gw)) as server:
            async def go():
                limits = httpx.Limits(max_connections=4)
                async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:
                    return await replay(client, events)
            with console.status(f"replaying {len(events):,} requests through the gateway…", spinner="dots"):
                decisions = asyncio.run(go())
    rows: dict[str, Counter] = {}
    first_block: dict[str, list[int]] = {}
    for account, decs in decisions.items():
        strategy = truth.get(account, {}).get("strategy", "organic")
        c = rows.setdefault(strategy, Counter())
        c["accounts"] += 1
        c["requests"] += len(decs)
        for i, (action, _) in enumerate(decs):
            c[action] += 1
            if action == "block" and (i == 0 or decs[i - 1][0] != "block"):
                first_block.setdefault(strategy, []).append(i + 1)
    table = Table(title="what the gateway did, by ground-truth strategy (live, in time order)", box=box.SIMPLE_HEAD)
    for col in ("strategy", "accts", "req", "allow", "modify", "throttle", "block", "1st block"):
        table.add_column(col, justify="left" if col == "strategy" else "right", no_wrap=True)
    for strategy, c in sorted(rows.items(), key=lambda kv: (truth_kind(kv[0]), kv[0])):
        blocks = sorted(first_block.get(strategy, []))
        table.add_row(strategy, f"{c['accounts']:,}", f"{c['requests']:,}", f"{c['allow']:,}", f"{c['modify']:,}",
                      f"{c['throttle']:,}", f"{c['block']:,}", f"#{blocks[0]}" if blocks else "")
    console.print(table)
    codes = Counter(code for decs in decisions.values() for _, reason in decs for code in reason.split(",") if code)
    console.print("reason codes: " + ", ".join(f"{code} ×{n:,}" for code, n in codes.most_common()))
    from distillguard.store import EventStore

    with EventStore(work / "events.duckdb", read_only=True) as store:
        stored = store.count()
        sample = store.run("SELECT account, json_extract_string(extra, '$.decision.explanation') FROM events "
                           "WHERE json_extract_string(extra, '$.decision.action') = 'block' ORDER BY ts LIMIT 1")
    if sample:
        console.print(f"example block explanation (sent to the client in x-distillguard-explanation and the JSON "
                      f"error): [italic]{escape(sample[0][1])}[/italic]")
    console.print(f"{stored:,} exchanges logged durably (fsynced) and loaded into {work / 'events.duckdb'}; "
                  f"every decision carries a reason code")
    return {"requests": len(events), "stored": stored, "codes": dict(codes),
            "blocked_accounts": {s: len(v) for s, v in first_block.items()},
            "by_strategy": {s: dict(c) for s, c in rows.items()}}


def truth_kind(strategy: str) -> int:
    return 0 if strategy in ("organic", "power_user", "batch_app", "eval_run", "researcher") else 1
