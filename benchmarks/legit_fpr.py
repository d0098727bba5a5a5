"""False positives of the hard legitimate families at scale (issue 14): `eval_detection.py --legit-fpr N`.

Issue 14 asks for every legitimate family <= 0.001 flagged as extraction with >= 3,000 accounts of
each hard-negative kind (one-sided 95 % upper bound <= 0.001, which needs 0 flagged of ~3,000).
The leave-one-family-out run (lofo_detection.py) holds every attack family too and scans through
the CLI, which is far too slow for thousands of accounts per kind; this mode measures only the
legitimate side, with nothing any fitted threshold or weight has seen:

* one organic-only lab run (``--reference-accounts`` users, seed 900000 + the first seed) is
  ingested and fitted through the public CLI (`distillguard ingest`, `distillguard baseline build`),
  once; the baseline file is kept in ``--work`` and reused by every chunk and every later call;
* the accounts are made in chunks: each chunk is one lab run (its own seed: the first seed + the
  chunk's number) with ``--chunk`` accounts of every legitimate family asked for, no campaign and
  no attack family, ingested into a scratch DuckDB store and scanned in this process with
  `scan_store` (the same code path as `distillguard scan`, one worker: the box is shared), then
  deleted (bounded disk);
* each chunk's per-account rows are appended to ``--work``/rows.jsonl as soon as it is scanned, so
  an interrupted run resumes where it stopped ((chunk seed, family) pairs already there are skipped:
  an actor's traffic depends only on the seed and its name) and a longer run extends a shorter one.

Accounts of one family share one scan with ``--chunk`` - 1 others of their family and the other
families' accounts: that is the density at which the behavioural swarm linker sees them (a flag
that came only through a flagged cluster is counted as a flag and shown apart).

Reported per family: accounts, flagged as extraction (status ``flagged``, alone, through an end
user or as a flagged cluster's member), the false-positive rate with its one-sided 95 %
Clopper-Pearson upper bound, the status mix, and the events scanned.
"""

from __future__ import annotations

import collections
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from distillguard.detect.baseline import Baseline
from distillguard.detect.scan import ScanOptions, scan_store
from distillguard.lab.legit import LEGIT_FAMILIES
from distillguard.lab.traffic import TrafficConfig, generate
from distillguard.store import EventStore
from distillguard.store.ingest import ingest_paths

from lofo_detection import cli, fpr_upper_bound, reference


def reference_baseline(args: Any, first_seed: int, work: Path) -> Path:
    """The organic reference's baseline (built once through the CLI, then reused)."""
    path = work / f"baseline-reference-{900_000 + first_seed}-{args.reference_accounts}-{args.days}d.json"
    if path.exists():
        return path
    t = time.perf_counter()
    store, labels = reference(args, first_seed, work)
    labels_path = work / f"labels-reference-{first_seed}.jsonl"
    labels_path.write_bytes(b"".join(line + b"\n" for line in labels))
    partial = path.with_suffix(".partial")
    cli("baseline", "build", store, "--labels", labels_path, "--out", partial)
    partial.rename(path)
    print(f"reference baseline: {len(labels):,} organic accounts (seed {900_000 + first_seed}), built in "
          f"{time.perf_counter() - t:.0f} s -> {path}", flush=True)
    return path


def scan_chunk(seed: int, args: Any, families: tuple[str, ...], baseline: Baseline, work: Path) -> list[dict]:
    """One lab run of ``args.chunk`` accounts of each family, scanned; one row per legitimate account."""
    with tempfile.TemporaryDirectory(prefix=f"chunk-{seed}-", dir=work) as tmp:
        config = TrafficConfig(seed=seed, accounts=args.organic, days=args.days, campaigns=(), batch_apps=0,
                               eval_runs=0, researchers=0, power_users=0, legit_families=families,
                               legit_accounts=args.chunk)
        t0 = time.perf_counter()
        summary = generate(config, Path(tmp) / "lab")
        labels = {r["account"]: r for r in map(orjson.loads, summary.labels_path.read_bytes().splitlines())}
        with EventStore(Path(tmp) / "chunk.duckdb") as store:
            ingest_paths(store, [summary.events_path])
            t1 = time.perf_counter()
            result = scan_store(store, ScanOptions(baseline=baseline, fpr=args.fpr, workers=1))
        t2 = time.perf_counter()
    rows = []
    for acct in result.accounts:
        label = labels.get(acct.account, {})
        family = label.get("family") or "organic"
        if family not in families:
            continue
        status = "flagged" if acct.flagged else acct.verdict.status
        rows.append({"seed": seed, "account": acct.account, "family": family, "queries": acct.queries,
                     "flagged": acct.flagged, "status": status, "alone": acct.verdict.flagged,
                     "through_cluster": acct.cluster_flagged and not acct.verdict.flagged,
                     "cluster": acct.cluster, "p_value": acct.verdict.p_value,
                     "reasons": [r.detail for r in acct.verdict.reasons][:6] if acct.flagged else []})
    print(f"  chunk seed {seed}: {summary.events:,} events, {len(rows):,} accounts, "
          f"{sum(r['flagged'] for r in rows)} flagged; {t1 - t0:.0f} s generate + ingest, {t2 - t1:.0f} s scan",
          flush=True)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| family | accounts | flagged as extraction | FPR | 95 % upper bound | of them through a cluster | "
           "status mix | events |", "|---|---:|---:|---:|---:|---:|---|---:|"]
    for family in sorted({r["family"] for r in rows}):
        group = [r for r in rows if r["family"] == family]
        flagged = sum(r["flagged"] for r in group)
        mix = ", ".join(f"{s} {k:,}" for s, k in collections.Counter(r["status"] for r in group).most_common())
        out.append(f"| {family} | {len(group):,} | {flagged} | {flagged / len(group):.4f} | "
                   f"{fpr_upper_bound(flagged, len(group)):.4f} | {sum(r['through_cluster'] for r in group)} | "
                   f"{mix} | {sum(r['queries'] for r in group):,} |")
    return "\n".join(out)


def main(args: Any) -> None:
    families = tuple(args.families.split(",")) if args.families else tuple(LEGIT_FAMILIES)
    unknown = [f for f in families if f not in LEGIT_FAMILIES]
    if unknown:
        raise SystemExit(f"unknown legitimate family '{unknown[0]}' (choose from {', '.join(LEGIT_FAMILIES)})")
    if args.chunk <= 0 or args.legit_fpr <= 0:
        raise SystemExit("--legit-fpr and --chunk must be > 0")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="dg-legit-fpr-"))
    work.mkdir(parents=True, exist_ok=True)
    first_seed = int(args.seeds.split(",")[0])
    ref_seed = args.reference_seed or first_seed
    baseline = Baseline.load(reference_baseline(args, ref_seed, work))
    rows_path = work / "rows.jsonl"
    rows = [orjson.loads(line) for line in rows_path.read_bytes().splitlines()] if rows_path.exists() else []
    chunks = -(-args.legit_fpr // args.chunk)
    seeds = range(first_seed, first_seed + chunks)
    done = {(r["seed"], r["family"]) for r in rows}
    t0 = time.perf_counter()
    print(f"{args.legit_fpr:,} accounts of each of {', '.join(families)} in {chunks} chunks of {args.chunk} "
          f"per family ({args.days} days); seeds {first_seed}..{first_seed + chunks - 1}; "
          f"{sum((s, f) in done for s in seeds for f in families)} (chunk, family) pairs already in {rows_path}",
          flush=True)

    def mine() -> list[dict]:
        return [r for r in rows if r["seed"] in seeds and r["family"] in families]

    for i, seed in enumerate(seeds):
        todo = tuple(f for f in families if (seed, f) not in done)
        if not todo:
            continue
        new = scan_chunk(seed, args, todo, baseline, work)
        with open(rows_path, "ab") as fh:
            fh.write(b"".join(orjson.dumps(r) + b"\n" for r in new))
        rows += new
        per = collections.Counter(r["family"] for r in mine())
        flagged = collections.Counter(r["family"] for r in mine() if r["flagged"])
        print(f"  {i + 1}/{chunks} chunks, {time.perf_counter() - t0:.0f} s: "
              + ", ".join(f"{f} {flagged[f]}/{per[f]}" for f in sorted(per)), flush=True)
    print(f"\nlegitimate families, seeds {first_seed}..{first_seed + chunks - 1} ({chunks} chunks of {args.chunk} "
          f"per family), {args.days} days, baseline fitted on {args.reference_accounts:,} organic users only "
          f"(seed {900_000 + ref_seed}), --fpr {args.fpr} ({time.perf_counter() - t0:.0f} s)\n")
    print(table(mine()))
    for r in [r for r in mine() if r["flagged"]][:30]:
        print(f"  flagged: seed {r['seed']} {r['family']} {r['account']} ({r['queries']} queries, p {r['p_value']:.2g}"
              f"{', through cluster ' + str(r['cluster']) if r['through_cluster'] else ''}): "
              + "; ".join(r["reasons"][:3]))
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(mine()))
