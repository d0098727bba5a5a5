"""Online detection speed: replay lab traffic through the gateway in time order.

Every lab event is sent to the real gateway app (in process, over httpx's ASGI transport) with
its own timestamp, client address and user agent; the upstream answers each request with the
answer recorded in the lab, so output-token counts are the lab's. The gateway runs in shadow
mode, so traffic keeps flowing after a decision and we can see when each account *would* have
been blocked.

Reported per strategy or family: queries until the account is flagged, first acted on (any
decision but allow that rate limits alone do not explain) and blocked (single accounts), queries
summed over a campaign's accounts until its first member is (swarms); and for organic and
legitimate families the accounts ever flagged, acted on, blocked, and blocked on their first pass
(an evaluation harness's or scanner's first run, from the label's ``first_pass``; the whole
traffic for the others). ``--accounts-per-kind N`` adds the lab's evasive and hard legitimate
families (issue 14). Events are held in memory (the recorded answers stand in for the upstream),
so size runs accordingly.

    python benchmarks/eval_gateway_online.py [--seeds 3001 3002] [--accounts 80] [--days 3] [--accounts-per-kind 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx
import orjson

from distillguard.gateway.app import Gateway, build_app
from distillguard.gateway.config import load_config
from distillguard.gateway.replay import keys_for, load_events, recorded_answers, replay
from distillguard.lab.evasive import ATTACK_FAMILIES
from distillguard.lab.legit import LEGIT_FAMILIES
from distillguard.lab.traffic import TrafficConfig, generate


async def run_replay(events: list[dict], keys: dict, work: Path,
                     clusters: list | None = None) -> dict[str, list]:
    work.mkdir(parents=True, exist_ok=True)
    keys_path = work / "keys.json"
    keys_path.write_bytes(orjson.dumps(keys))
    cfg = load_config(None, upstream="http://upstream.invalid", keys=keys_path, trust_client_timestamps=True,
                      trust_forwarded_for=True)
    cfg.log.dir = work / "log"
    cfg.log.sink = "none"
    cfg.log.fsync = False
    cfg.policy.mode = "shadow"
    gw = Gateway(cfg, transport=httpx.MockTransport(recorded_answers(events)))
    app = build_app(gw)
    await gw.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            decisions = await replay(client, events)
        if clusters is not None:        # the live hydra clusters at the end (admin API's view)
            clusters.extend(gw.scorer.clusters())
        return decisions
    finally:
        await gw.stop()


def acted(action: str, codes: str) -> bool:
    """A detection-driven action: anything but allow, unless rate limits alone explain it."""
    return action != "allow" and any(c and not c.startswith("rate_limit_") for c in codes.split(","))


def lab_config(seed: int, accounts: int, days: int, per_kind: int) -> TrafficConfig:
    if not per_kind:
        return TrafficConfig(seed=seed, accounts=accounts, days=days, batch_per_day=600)
    return TrafficConfig(seed=seed, accounts=accounts, days=days, batch_per_day=600, families=ATTACK_FAMILIES,
                         family_instances=per_kind, legit_families=tuple(LEGIT_FAMILIES), legit_accounts=per_kind)


def evaluate(seed: int, accounts: int, days: int, work: Path, per_kind: int = 0,
             detail_families: tuple[str, ...] = ("eval_harness",)) -> dict:
    lab = work / f"lab-{seed}"
    generate(lab_config(seed, accounts, days, per_kind), lab)
    events = load_events(lab / "events.jsonl.gz")
    labels = {r["account"]: r for r in map(orjson.loads, (lab / "labels.jsonl").read_bytes().splitlines())}
    keys = keys_for(events)
    t = time.perf_counter()
    live_clusters: list[dict] = []
    decisions = asyncio.run(run_replay(events, keys, work / f"gw-{seed}", live_clusters))
    elapsed = time.perf_counter() - t
    per_strategy: dict[str, list] = defaultdict(list)
    campaigns: dict[str, list[str]] = defaultdict(list)
    negatives: dict[str, list[tuple]] = defaultdict(list)
    details: list[dict] = []
    flag_codes = ("extraction_flagged", "cluster_flagged")
    for account, decs in decisions.items():
        label = labels.get(account, {"kind": "organic", "strategy": "organic"})
        family = label.get("family") or label.get("strategy") or "organic"
        if label["kind"] == "extraction":
            campaigns[label.get("campaign") or account].append(account)
        else:
            flagged = any(any(c in codes for c in flag_codes) for _, codes in decs)
            blocked = any(action == "block" for action, _ in decs)
            first_pass = decs[: label.get("first_pass") or len(decs)]
            blocked_first = any(action == "block" for action, _ in first_pass)
            first_action = next((i + 1 for i, (a, c) in enumerate(decs) if acted(a, c)), None)
            negatives[family].append((flagged, blocked, blocked_first, first_action is not None))
            if family in detail_families:
                n_first = label.get("first_pass") or len(decs)
                flag_at = next((i + 1 for i, (_, c) in enumerate(decs) if any(x in c for x in flag_codes)), None)
                block_at = next((i + 1 for i, (a, _) in enumerate(decs) if a == "block"), None)
                evaluation = [i + 1 for i, (_, c) in enumerate(decs) if "evaluation_run" in c.split(",")]
                details.append({"family": family, "account": account, "items": n_first, "queries": len(decs),
                                "runs": label.get("runs"), "first_flag": flag_at, "first_block": block_at,
                                "block_pass": None if block_at is None else (block_at - 1) // n_first + 1,
                                "blocked_requests": sum(a == "block" for a, _ in decs),
                                "evaluation_from": evaluation[0] if evaluation else None,
                                "last_codes": decs[-1][1] if decs else ""})
    # Campaign-level: the campaign's queries in time order, until any member is flagged / acted on / blocked.
    order: dict[str, list[str]] = defaultdict(list)
    for ev in events:
        label = labels.get(ev["account"])
        if label and label["kind"] == "extraction":
            order[label.get("campaign") or ev["account"]].append(ev["account"])
    for campaign, members in campaigns.items():
        label = labels[members[0]]
        family = label.get("family") or label["strategy"]
        seen: dict[str, int] = defaultdict(int)
        until_flag = until_block = until_action = None
        actions: dict[str, int] = defaultdict(int)       # every decision on the campaign, by action
        for i, account in enumerate(order[campaign]):
            action, codes = decisions[account][seen[account]]
            seen[account] += 1
            actions[action] += 1
            if until_flag is None and any(c in codes for c in flag_codes):
                until_flag = i + 1
            if until_action is None and acted(action, codes):
                until_action = i + 1
            if until_block is None and action == "block":
                until_block = i + 1
        per_strategy[family].append({"campaign": campaign, "accounts": len(members),
                                     "queries": len(order[campaign]), "queries_until_flag": until_flag,
                                     "queries_until_action": until_action, "queries_until_block": until_block,
                                     "actions": dict(actions)})
    cluster_rows = []
    for c in live_clusters:
        kinds: dict[str, int] = defaultdict(int)
        for account in c["accounts"]:
            label = labels.get(account, {"kind": "organic", "strategy": "organic"})
            kinds[f"{label['kind']}:{label.get('family') or label.get('strategy') or 'organic'}"] += 1
        cluster_rows.append({"cluster": c["cluster"], "size": len(c["accounts"]), "members": dict(kinds),
                             "carried_by": c["carried_by"], "links": c["links"], "flagged": c["flagged"]})
    return {"seed": seed, "events": len(events), "replay_seconds": elapsed, "clusters": cluster_rows,
            "per_strategy": per_strategy, "details": details,
            "negatives": {k: {"accounts": len(v), "flagged": sum(f for f, *_ in v), "blocked": sum(b for _, b, *_ in v),
                              "blocked_first_pass": sum(x[2] for x in v), "acted": sum(x[3] for x in v)}
                          for k, v in negatives.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[3001, 3002])
    parser.add_argument("--accounts", type=int, default=80)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--accounts-per-kind", type=int, default=0,
                        help="add the lab's evasive and hard legitimate families (issue 14): instances of each "
                             "attack family and accounts of each legitimate family")
    parser.add_argument("--detail", nargs="*", default=["eval_harness"],
                        help="legitimate families listed account by account (first flag, first block and "
                             "the pass it fell in, requests blocked, first `evaluation` decision)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dg-online-"))
    results = [evaluate(seed, args.accounts, args.days, work, args.accounts_per_kind, tuple(args.detail))
               for seed in args.seeds]
    by_strategy: dict[str, list] = defaultdict(list)
    negatives: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for r in results:
        print(f"seed {r['seed']}: {r['events']:,} events replayed in {r['replay_seconds']:.0f} s "
              f"({r['events'] / r['replay_seconds']:,.0f} requests/s through the in-process gateway)")
        for strategy, rows in r["per_strategy"].items():
            by_strategy[strategy].extend(rows)
        for kind, v in r["negatives"].items():
            negatives[kind][0] += v["accounts"]
            negatives[kind][1] += v["flagged"]
            negatives[kind][2] += v["blocked"]
            negatives[kind][3] += v["blocked_first_pass"]
            negatives[kind][4] += v["acted"]
    print("\n| family | campaigns | flagged | queries until flagged (min / median / max) | acted on | "
          "queries until first action (min / median / max) | blocked | until blocked (median) |")
    print("|---|---:|---:|---|---:|---|---:|---:|")
    spread = lambda q: f"{q[0]} / {statistics.median(q):.0f} / {q[-1]}" if q else "-"  # noqa: E731
    for strategy, rows in sorted(by_strategy.items()):
        q = sorted(row["queries_until_flag"] for row in rows if row["queries_until_flag"] is not None)
        a = sorted(row["queries_until_action"] for row in rows if row["queries_until_action"] is not None)
        b = sorted(row["queries_until_block"] for row in rows if row["queries_until_block"] is not None)
        print(f"| {strategy} | {len(rows)} | {len(q)} | {spread(q)} | {len(a)} | {spread(a)} | {len(b)} | "
              f"{statistics.median(b) if b else '-'} |")
    print("\n| legitimate family | accounts | flagged | acted on | blocked | blocked on first pass |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind, (n, flagged, blocked, first, acted_on) in sorted(negatives.items()):
        print(f"| {kind} | {n} | {flagged} | {acted_on} | {blocked} | {first} |")
    details = [d for r in results for d in r["details"]]
    if details:
        print("\n| account (detail) | items | runs | queries | first flagged | first blocked (pass) | "
              "requests blocked | `evaluation` from | last decision's codes |")
        print("|---|---:|---:|---:|---:|---|---:|---:|---|")
        for d in details:
            block = "-" if d["first_block"] is None else f"{d['first_block']} (pass {d['block_pass']})"
            print(f"| {d['account']} | {d['items']} | {d['runs']} | {d['queries']} | {d['first_flag'] or '-'} | "
                  f"{block} | {d['blocked_requests']} | {d['evaluation_from'] or '-'} | {d['last_codes'] or '-'} |")
    print("\n| campaign (swarm-like families) | family | accounts | queries | until first action | until block | "
          "allow | modify (limited) | throttle (refused) | block |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for strategy, rows in sorted(by_strategy.items()):
        for row in rows:
            if row["accounts"] < 3:
                continue
            n = row["actions"]
            print(f"| {row['campaign']} | {strategy} | {row['accounts']} | {row['queries']} | "
                  f"{row['queries_until_action'] or '-'} | {row['queries_until_block'] or '-'} | {n.get('allow', 0)} | "
                  f"{n.get('modify', 0)} | {n.get('throttle', 0)} | {n.get('block', 0)} |")
    rows = [c for r in results for c in r["clusters"]]
    if rows:
        print("\n| live cluster | accounts | members (kind:family) | carried by | links | flagged |")
        print("|---|---:|---|---|---|---|")
        for c in rows:
            members = ", ".join(f"{k} {n}" for k, n in sorted(c["members"].items()))
            links = ", ".join(f"{k} {n}" for k, n in sorted(c["links"].items()))
            print(f"| {c['cluster']} | {c['size']} | {members} | {c['carried_by']} | {links} | {c['flagged']} |")
    if args.json:
        args.json.write_text(json.dumps({"runs": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
