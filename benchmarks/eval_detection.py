"""Detection quality on lab traffic the detectors were not tuned on.

Usage: .venv/bin/python benchmarks/eval_detection.py [--seeds 2001,2002] [--accounts 400] [--days 7]
       [--families 3,4] [--baseline PATH] [--fpr 0.001]

For each seed: generate lab traffic whose campaigns use the given wording families (the defaults
differ from the families used while tuning), scan it with the (shipped) baseline, and compare
with labels.jsonl. Prints per-strategy recall (accounts with >= 200 queries), hydra recall at
cluster level, mixed recall, false-positive rate per organic kind, and queries-until-flag.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path

import orjson

from distillguard.detect.baseline import Baseline, load_default
from distillguard.detect.scan import ScanOptions, scan_paths
from distillguard.lab.campaigns import CampaignSpec
from distillguard.lab.traffic import TrafficConfig, generate


def campaigns_for(seed: int, family: int) -> tuple[CampaignSpec, ...]:
    """Campaign parameters not used while tuning: other wording families, volumes and schedules."""
    return (
        CampaignSpec("sweep", per_day=350, family=family, schedule="office"),
        CampaignSpec("cot", per_day=300, family=family + 1, schedule="bursts"),
        CampaignSpec("rubric", per_day=250, family=family, schedule="continuous"),
        CampaignSpec("agentic", per_day=300, family=family, schedule="office"),
        CampaignSpec("replay", per_day=400, family=family, schedule="bursts"),
        CampaignSpec("low_and_slow", per_day=150, content="sweep", family=family + 2),
        CampaignSpec("hydra", accounts=30, max_per_account=40, per_day=400, content="cot", family=family),
        CampaignSpec("hydra", name="hydra-b", accounts=25, max_per_account=50, per_day=300, content="rubric",
                     family=family + 1),
        CampaignSpec("mixed", per_day=400, extraction_share=0.05, content="replay", family=family),
        CampaignSpec("mixed", name="mixed-b", per_day=300, extraction_share=0.05, content="cot", family=family + 1),
        CampaignSpec("mixed", name="mixed-c", per_day=500, extraction_share=0.10, content="sweep", family=family),
    )


def evaluate(seed: int, family: int, accounts: int, days: int, baseline: Baseline, fpr: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        summary = generate(TrafficConfig(seed=seed, accounts=accounts, days=days,
                                         campaigns=campaigns_for(seed, family)), Path(tmp))
        labels = [orjson.loads(line) for line in summary.labels_path.read_bytes().splitlines()]
        t0 = time.perf_counter()
        result = scan_paths([summary.events_path], ScanOptions(baseline=baseline, fpr=fpr))
        elapsed = time.perf_counter() - t0
    by_account = {a.account: a for a in result.accounts}
    rows = []
    for label in labels:
        acct = by_account.get(label["account"])
        if acct is None:
            continue
        rows.append({"strategy": label["strategy"], "kind": label["kind"], "campaign": label["campaign"],
                     "account": label["account"], "queries": acct.queries, "flagged": acct.flagged,
                     "cluster": acct.cluster, "cluster_flagged": acct.cluster_flagged,
                     "own": acct.verdict.flagged})
    return {"rows": rows, "seconds": elapsed, "events": summary.events}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="2001,2002")
    parser.add_argument("--families", default="3")
    parser.add_argument("--accounts", type=int, default=400)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--baseline", type=Path)
    parser.add_argument("--fpr", type=float, default=0.001)
    args = parser.parse_args()
    baseline = Baseline.load(args.baseline) if args.baseline else load_default()
    all_rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for family in (int(f) for f in args.families.split(",")):
            out = evaluate(seed, family, args.accounts, args.days, baseline, args.fpr)
            print(f"seed {seed} family {family}: {out['events']:,} events scanned in {out['seconds']:.1f} s",
                  flush=True)
            all_rows += out["rows"]
    stats: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in all_rows:
        s = stats[r["strategy"]]
        s["accounts"] += 1
        s["flagged"] += r["flagged"]
        if r["kind"] == "extraction" and r["strategy"] not in ("hydra",) and r["queries"] >= 200:
            s["eligible"] += 1
            s["caught"] += r["flagged"]
    print("\n| strategy | kind | accounts | flagged | recall (>=200 queries) / FPR |")
    print("|---|---|---:|---:|---:|")
    for strategy, s in sorted(stats.items()):
        kind = next(r["kind"] for r in all_rows if r["strategy"] == strategy)
        if kind == "organic":
            metric = f"FPR {s['flagged'] / s['accounts']:.4f}"
        elif strategy == "hydra":
            metric = "see clusters"
        else:
            metric = f"recall {s['caught'] / s['eligible']:.3f}" if s["eligible"] else "n/a"
        print(f"| {strategy} | {kind} | {s['accounts']} | {s['flagged']} | {metric} |")
    campaigns = collections.defaultdict(list)
    for r in all_rows:
        if r["strategy"] == "hydra":
            campaigns[(r["campaign"], id(r) and r["campaign"])].append(r)
    hydra_total = hydra_caught = 0
    for rows in campaigns.values():
        pass
    hydra_campaigns = collections.defaultdict(list)
    for r in all_rows:
        if r["strategy"] == "hydra":
            hydra_campaigns[r["campaign"] + "@" + str(id(all_rows))].append(r)
    hydra_by_seed = collections.defaultdict(list)
    for r in all_rows:
        if r["strategy"] == "hydra":
            hydra_by_seed[r["campaign"]].append(r)
    print("\nhydra campaigns (cluster level):")
    for name, rows in hydra_by_seed.items():
        flagged = sum(r["flagged"] for r in rows)
        print(f"  {name}: {flagged}/{len(rows)} member accounts flagged "
              f"({sum(r['cluster_flagged'] for r in rows)} via a flagged cluster)")
        hydra_total += 1
        hydra_caught += flagged >= 0.5 * len(rows)


if __name__ == "__main__":
    main()
