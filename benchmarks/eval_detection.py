"""Detection quality on lab traffic the detectors were not tuned on.

Usage: .venv/bin/python benchmarks/eval_detection.py [--seeds 2001,2002,2003] [--accounts 400] [--days 7]
       [--family 3] [--baseline PATH] [--fpr 0.001]
       .venv/bin/python benchmarks/eval_detection.py --leave-one-family-out [--accounts-per-kind 3]
       [--accounts 200] [--reference-accounts 1000] [--seeds 4001] [--days 7] [--families a,b] [--work DIR] [--json OUT]
       (see benchmarks/lofo_detection.py: every family scored with a baseline built without it)
       .venv/bin/python benchmarks/eval_detection.py --legit-fpr 3000 [--chunk 50] [--families a,b] [--days 5]
       [--reference-accounts 2000] [--seeds 5001] [--work DIR] [--json OUT]
       (see benchmarks/legit_fpr.py: false positives of the legitimate families, no campaign, at scale)

Tuning used seed 1000 (the shipped baseline), seeds 1-7 and the default campaign parameters
(wording families 0-2). Here every seed is new and campaigns use other wording families,
volumes, schedules and mixes. For each seed: generate, ingest, scan with the shipped baseline,
compare with labels.jsonl. Prints per-strategy recall (accounts with >= 200 queries), hydra
recall at cluster level, mixed recall, false-positive rate per organic kind, and
queries-until-flag per strategy (the first N of the campaign's queries, in time order, that
already get it flagged).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson
import pandas as pd

from distillguard.detect.baseline import Baseline, load_default
from distillguard.detect.engine import input_columns_sql
from distillguard.detect.features import features_frame, features_with_end_users
from distillguard.detect.scan import ScanOptions, judge_end_users, scan_store
from distillguard.detect.scoring import judge
from distillguard.lab.campaigns import CampaignSpec
from distillguard.lab.traffic import TrafficConfig, generate
from distillguard.store import EventStore
from distillguard.store.ingest import ingest_paths

CHECKPOINTS = (25, 50, 75, 100, 150, 200, 300, 400, 600, 800, 1200, 1600, 2400, 3200, 4800)


def campaigns_for(family: int) -> tuple[CampaignSpec, ...]:
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
        # Resellers. cot and sweep do not name their customers, so the account-level tests are
        # measured on their own; the replay streams (organic-looking prompts) are findable only
        # when the reseller names its customers (request.user) and the stream harvests at volume.
        CampaignSpec("mixed", per_day=2000, extraction_share=0.05, content="replay", family=family),
        CampaignSpec("mixed", name="mixed-b", per_day=300, extraction_share=0.05, content="cot", family=family + 1,
                     end_user_ids=False),
        CampaignSpec("mixed", name="mixed-c", per_day=500, extraction_share=0.10, content="sweep", family=family,
                     end_user_ids=False),
        CampaignSpec("mixed", name="mixed-d", per_day=400, extraction_share=0.05, content="replay", family=family),
        CampaignSpec("mixed", name="mixed-e", per_day=2000, extraction_share=0.05, content="replay", family=family,
                     end_user_ids=False),
    )


def queries_until_flag(store: EventStore, accounts: list[str], baseline: Baseline, fpr: float) -> int | None:
    """Smallest checkpoint N such that the first N queries (of these accounts, in time order) are flagged."""
    quoted = ", ".join("'" + a.replace("'", "''") + "'" for a in accounts)
    frame = store.con.sql(f"SELECT {input_columns_sql(store)} FROM events WHERE account IN ({quoted}) "
                          f"ORDER BY ts").df()
    def flagged(head: pd.DataFrame) -> bool:  # the account itself, or one of its end users (as scan judges them)
        (_, own), *users = features_with_end_users("acct", head, max_tokens_cap=baseline.max_tokens_cap)
        if judge(own, baseline, fpr).flagged:
            return True
        if not users:
            return False
        for _, feats in users:
            feats.pop("template_keys", None)
        frame = features_frame([feats for _, feats in users], [key for key, _ in users])
        return any(v.flagged for v in judge_end_users(frame, baseline, fpr).values())

    for n in CHECKPOINTS:
        if n > len(frame):
            break
        if flagged(frame.head(n)):
            return n
    return len(frame) if flagged(frame) else None


def evaluate(seed: int, family: int, accounts: int, days: int, baseline: Baseline, fpr: float,
             hard_negatives: int = 0, resellers: int = 0, reseller_per_day: int = 1000) -> dict:
    extra = {}
    if hard_negatives:
        # Many hard negatives (and no campaign) to measure each kind's false-positive rate.
        extra = {"batch_apps": hard_negatives, "eval_runs": hard_negatives, "researchers": hard_negatives,
                 "power_users": hard_negatives, "batch_per_day": 300, "campaigns": ()}
    if resellers:
        extra = {**(extra or {"batch_apps": 0, "eval_runs": 0, "researchers": 0, "power_users": 0, "campaigns": ()}),
                 "resellers": resellers, "reseller_per_day": reseller_per_day}
    with tempfile.TemporaryDirectory() as tmp:
        config = TrafficConfig(seed=seed, accounts=accounts, days=days, campaigns=campaigns_for(family))
        if extra:
            config = TrafficConfig(**{**config.__dict__, **extra})
        summary = generate(config, Path(tmp))
        labels = [orjson.loads(line) for line in summary.labels_path.read_bytes().splitlines()]
        with EventStore(Path(tmp) / "e.duckdb") as store:
            ingest_paths(store, [summary.events_path])
            t0 = time.perf_counter()
            result = scan_store(store, ScanOptions(baseline=baseline, fpr=fpr))
            elapsed = time.perf_counter() - t0
            by_account = {a.account: a for a in result.accounts}
            rows = []
            for label in labels:
                acct = by_account.get(label["account"])
                if acct is not None:
                    rows.append({**label, "seed": seed, "queries": acct.queries, "flagged": acct.flagged,
                                 "cluster_flagged": acct.cluster_flagged})
            until: dict[str, list[int | None]] = collections.defaultdict(list)
            members: dict[str, list[str]] = collections.defaultdict(list)
            for label in labels:
                if label["kind"] == "extraction" and label["account"] in by_account:
                    members[label["campaign"]].append(label["account"])
            for campaign, accts in members.items():
                strategy = next(l["strategy"] for l in labels if l["campaign"] == campaign)
                until[strategy].append(queries_until_flag(store, accts, baseline, fpr))
    return {"rows": rows, "seconds": elapsed, "events": summary.events, "until": until}


def fpr_upper_bound(flagged: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound on a rate seen as flagged/n (0/n gives ~3/n)."""
    from scipy.stats import beta
    return 1.0 if flagged >= n else float(beta.ppf(confidence, flagged + 1, n - flagged))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="2001,2002,2003")
    parser.add_argument("--family", type=int, default=3)
    parser.add_argument("--accounts", type=int, default=400)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--baseline", type=Path)
    parser.add_argument("--fpr", type=float, default=0.001)
    parser.add_argument("--hard-negatives", type=int, default=0,
                        help="run N accounts of each hard-negative kind and no campaign (FPR per kind)")
    parser.add_argument("--resellers", type=int, default=0,
                        help="run N organic resellers (aggregators of organic customers; half name them) and no campaign")
    parser.add_argument("--reseller-per-day", type=int, default=1000)
    lofo = parser.add_argument_group("leave one family out (issue 14)")
    lofo.add_argument("--leave-one-family-out", action="store_true",
                      help="score every lab family with a baseline built (through the CLI) without it")
    lofo.add_argument("--accounts-per-kind", type=int, default=3,
                      help="accounts of each legitimate family and instances of each attack family")
    lofo.add_argument("--reference-accounts", type=int, default=1000,
                      help="organic users of the reference run every baseline is fitted on")
    lofo.add_argument("--fit-other-families", action="store_true",
                      help="fit each family's baseline on the reference plus every other family (one build per "
                           "legitimate family) instead of the organic reference alone")
    lofo.add_argument("--families", default="", help="only these families (comma-separated)")
    lofo.add_argument("--no-lab-strategies", dest="lab_strategies", action="store_false",
                      help="leave out the older strategies and hard negatives (sweep ... mixed, batch_app ...)")
    lofo.add_argument("--work", default="", help="keep the lab runs, baselines and files here")
    lofo.add_argument("--legit-fpr", type=int, default=0, metavar="N",
                      help="only the legitimate families, N accounts of each, in chunks (see benchmarks/legit_fpr.py)")
    lofo.add_argument("--chunk", type=int, default=50, help="with --legit-fpr: accounts of each family per lab run")
    lofo.add_argument("--organic", type=int, default=0, help="with --legit-fpr: organic users in each lab run")
    lofo.add_argument("--reference-seed", type=int, default=0,
                      help="with --legit-fpr: the organic reference is lab seed 900000 + this (default: the first seed)")
    lofo.add_argument("--json", default="", help="write the per-account rows here")
    args = parser.parse_args()
    if args.legit_fpr:
        import legit_fpr

        if "--seeds" not in sys.argv:
            args.seeds = "5001"
        legit_fpr.main(args)
        return
    if args.leave_one_family_out:
        import lofo_detection

        args.organic = args.accounts if "--accounts" in sys.argv else 200
        if "--seeds" not in sys.argv:
            args.seeds = "4001"
        lofo_detection.main(args)
        return
    baseline = Baseline.load(args.baseline) if args.baseline else load_default()
    rows: list[dict] = []
    until: dict[str, list[int | None]] = collections.defaultdict(list)
    for seed in (int(s) for s in args.seeds.split(",")):
        out = evaluate(seed, args.family, args.accounts, args.days, baseline, args.fpr, args.hard_negatives,
                       args.resellers, args.reseller_per_day)
        print(f"seed {seed}: {out['events']:,} events scanned in {out['seconds']:.1f} s", flush=True)
        rows += out["rows"]
        for k, v in out["until"].items():
            until[k] += v
    print("\n| strategy | kind | accounts | flagged | metric | queries until flag (median, max) |")
    print("|---|---|---:|---:|---:|---:|")
    for strategy in sorted({r["strategy"] for r in rows}):
        group = [r for r in rows if r["strategy"] == strategy]
        kind = group[0]["kind"]
        flagged = sum(r["flagged"] for r in group)
        if kind == "organic":
            metric = f"FPR {flagged / len(group):.4f} (95% upper bound {fpr_upper_bound(flagged, len(group)):.4f})"
        elif strategy == "hydra":
            campaigns = collections.defaultdict(list)
            for r in group:
                campaigns[(r["seed"], r["campaign"])].append(r)
            caught = sum(all(r["cluster_flagged"] for r in members) for members in campaigns.values())
            metric = f"cluster recall {caught}/{len(campaigns)}"
        else:
            eligible = [r for r in group if r["queries"] >= 200]
            metric = f"recall {sum(r['flagged'] for r in eligible)}/{len(eligible)}"
        ql = [q for q in until.get(strategy, []) if q is not None]
        missed = sum(q is None for q in until.get(strategy, []))
        qtext = (f"{statistics.median(ql):,.0f}, {max(ql):,}" if ql else "–") + (f" ({missed} never)" if missed else "")
        print(f"| {strategy} | {kind} | {len(group)} | {flagged} | {metric} | {qtext if kind != 'organic' else ''} |")
    mixed = [r for r in rows if r["strategy"] == "mixed"]
    if mixed:
        print("\nmixed resellers by campaign: " + ", ".join(
            f"{name} ({next(r.get('content') for r in mixed if r['campaign'] == name)} "
            f"{next(r.get('extraction_share') for r in mixed if r['campaign'] == name):.0%}"
            f"{', end-user ids' if next(r.get('end_user_ids') for r in mixed if r['campaign'] == name) else ''}) "
            f"{sum(r['flagged'] for r in mixed if r['campaign'] == name)}/"
            f"{sum(1 for r in mixed if r['campaign'] == name)}"
            for name in sorted({r['campaign'] for r in mixed})))


if __name__ == "__main__":
    main()
