"""What sharing intelligence buys: actors caught at provider A move to provider B.

For each seed: provider A's lab traffic holds one extracting account per strategy. A scans its
store, exports the campaigns it confirmed as a signed STIX bundle, and B imports it (the same
code as `intel export` / `intel import`; the TAXII path is the demo's and the intel tests').
Then each actor opens fresh accounts at B, once per variant of what it carries over:

* ``none``       new key, new card, new e-mail, new addresses, other prompt wording;
* ``payment``    only the card it paid A with;
* ``email``      only its e-mail pattern: a new mailbox at the same (own) domain;
* ``templates``  only its prompt templates (the same generator wording as at A).

B's whole traffic (its own organic users and hard negatives, plus the actors) is replayed in
time order through B's gateway twice, with and without A's intel, and we count each actor's
queries until B's gateway first acts on it (a detection or intel reason, not a plain rate
limit), and B's legitimate accounts that any intel indicator matched (false matches).

    python benchmarks/eval_intel_sharing.py [--seeds 1 2 3 4 5] [--accounts 40] [--days 2]
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

from distillguard.detect.scan import ScanOptions, scan_store
from distillguard.gateway.app import Gateway, build_app
from distillguard.gateway.config import load_config
from distillguard.gateway.replay import keys_for, load_events, recorded_answers, replay
from distillguard.intel.export import ExportOptions, export_bundle
from distillguard.intel.home import IntelHome, Peer
from distillguard.intel.importer import import_bundle
from distillguard.intel.keys import CommunityKey, public_key_text
from distillguard.intel.publish import sign_and_publish
from distillguard.intel.store import IntelStore
from distillguard.lab.campaigns import CampaignSpec
from distillguard.lab.traffic import TrafficConfig, generate
from distillguard.store import EventStore
from distillguard.store.ingest import ingest_paths

STRATEGIES = ("sweep", "cot", "rubric", "agentic")
VARIANTS = ("none", "payment", "email", "templates")
FAMILY_A, FAMILY_OTHER = 1, 4          # prompt wording at A; the wording an actor switches to at B
ACTING_CODES = ("extraction_flagged", "cluster_flagged", "elevated", "intel_flagged", "intel_match")


def _labels(path: Path) -> dict[str, dict]:
    return {r["account"]: r for r in map(orjson.loads, path.read_bytes().splitlines())}


def _rewrite(events_path: Path, change) -> None:
    """Apply ``change(event)`` to every event of a lab file (in place)."""
    import gzip

    with gzip.open(events_path, "rb") as fh:
        events = [orjson.loads(line) for line in fh]
    for ev in events:
        change(ev)
    events_path.write_bytes(gzip.compress(b"".join(orjson.dumps(e) + b"\n" for e in events), compresslevel=3))


def provider_a(seed: int, accounts: int, days: int, work: Path, home_a: IntelHome, home_b: IntelHome) -> dict:
    """A's lab, scan and signed export; B imports it. Returns each strategy's actor identity at A."""
    specs = tuple(CampaignSpec(s, name=f"{s}-actor", per_day=300, family=FAMILY_A) for s in STRATEGIES)
    summary = generate(TrafficConfig(seed=seed, accounts=accounts, days=days, batch_per_day=200, campaigns=specs),
                       work / "a")
    labels = _labels(summary.labels_path)
    actors = {r["strategy"]: acct for acct, r in labels.items() if r["kind"] == "extraction"}
    # Each actor registered at A with a mailbox at its own domain (what the 'email' variant keeps).
    domain = {acct: f"{s}-ops-{seed}.example" for s, acct in actors.items()}

    def own_domain(ev: dict) -> None:
        if ev["account"] in domain:
            ev["identity"] = {**ev["identity"], "email": f"ops.{ev['account'][-4:]}@{domain[ev['account']]}"}
    _rewrite(summary.events_path, own_domain)
    with EventStore(work / "a.duckdb") as store:
        ingest_paths(store, [summary.events_path])
        scan = scan_store(store, ScanOptions()).to_dict()
        flagged = {a["account"] for a in scan["accounts"] if a["flagged"]}
        result = export_bundle(scan, store.con, home_a, ExportOptions())
    bundle = work / "a-bundle.json"
    sign_and_publish(result.bundle, home_a, None, valid_days=90, out=bundle)
    with IntelStore(home_b.db_path) as istore:
        imported = import_bundle(bundle, home_b, istore)
    ident = {}
    with EventStore(work / "a.duckdb", read_only=True) as store:
        for s, acct in actors.items():
            row = store.run("SELECT identity FROM events WHERE account = ? LIMIT 1", [acct])
            ident[s] = orjson.loads(row[0][0]) | {"account": acct, "caught_at_a": acct in flagged}
    return {"actors": ident, "indicators": result.indicators, "imported": imported.indicators,
            "campaigns": len(result.campaigns)}


def provider_b(seed: int, accounts: int, days: int, work: Path, actors_a: dict) -> tuple[Path, dict[str, tuple]]:
    """B's lab: its own users plus, per strategy and variant, a fresh account of A's actor."""
    specs = tuple(CampaignSpec(s, name=f"{s}-{v}", per_day=300,
                               family=FAMILY_A if v == "templates" else FAMILY_OTHER)
                  for s in STRATEGIES for v in VARIANTS)
    summary = generate(TrafficConfig(seed=seed + 7919, accounts=accounts, days=days, batch_per_day=200,
                                     campaigns=specs), work / "b")
    labels = _labels(summary.labels_path)
    moved: dict[str, tuple[str, str]] = {}
    for acct, r in labels.items():
        if r["kind"] == "extraction":
            strategy, variant = r["campaign"].rsplit("-", 1)
            moved[acct] = (strategy, variant)

    def carry_over(ev: dict) -> None:
        if ev["account"] not in moved:
            return
        strategy, variant = moved[ev["account"]]
        at_a = actors_a[strategy]
        identity = {**ev["identity"], "email": f"u{ev['account'][-6:]}@quickinbox.io",
                    "payment": f"card_b_{ev['account'][-8:]}"}
        if variant == "payment":
            identity["payment"] = at_a["payment"]
        elif variant == "email":
            identity["email"] = f"team.{ev['account'][-3:]}@{at_a['email'].rpartition('@')[2]}"
        ev["identity"] = identity
    _rewrite(summary.events_path, carry_over)
    return summary.events_path, {a: (*moved.get(a, ("", "")), labels[a]["kind"]) for a in labels}


async def _replay(events: list[dict], keys: dict, work: Path, intel_home: Path | None) -> dict[str, list]:
    work.mkdir(parents=True, exist_ok=True)
    (work / "keys.json").write_bytes(orjson.dumps(keys))
    toml = work / "gateway.toml"
    toml.write_text(f'[intel]\nhome = "{intel_home}"\nreload_s = 0\n' if intel_home else "")
    cfg = load_config(toml, upstream="http://upstream.invalid", keys=work / "keys.json",
                      trust_client_timestamps=True, trust_forwarded_for=True)
    cfg.log.dir, cfg.log.sink, cfg.log.fsync = work / "log", "none", False
    cfg.policy.mode = "shadow"          # traffic keeps flowing: we see when B *would* act
    gw = Gateway(cfg, transport=httpx.MockTransport(recorded_answers(events)))
    await gw.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(gw)), base_url="http://gw") as c:
            return await replay(c, events)
    finally:
        await gw.stop()


def _first(decisions: list[tuple[str, str]], codes: tuple[str, ...]) -> int | None:
    for i, (_, reason) in enumerate(decisions):
        if any(c in reason.split(",") for c in codes):
            return i + 1
    return None


def evaluate(seed: int, accounts: int, days: int, root: Path) -> dict:
    work = root / f"seed-{seed}"
    key = CommunityKey.generate()
    home_a = IntelHome.init(work / "home-a", "Provider A", key)
    home_b = IntelHome.init(work / "home-b", "Provider B", key)
    home_b.add_peer(Peer(name="provider-a", public_key=public_key_text(home_a.signing_key().public), trust=1.0))
    home_b.save()
    a = provider_a(seed, accounts, days, work, home_a, home_b)
    events_path, truth = provider_b(seed, accounts, days, work, a["actors"])
    events = load_events(events_path)
    keys = keys_for(events)
    t = time.perf_counter()
    with_intel = asyncio.run(_replay(events, keys, work / "gw-intel", home_b.path))
    without = asyncio.run(_replay(events, keys, work / "gw-plain", None))
    rows, false_matches, legit = [], [], 0
    for acct, (strategy, variant, kind) in truth.items():
        if kind == "extraction":
            rows.append({"strategy": strategy, "variant": variant, "queries": len(with_intel[acct]),
                         "caught_at_a": a["actors"][strategy]["caught_at_a"],
                         "with_intel": _first(with_intel[acct], ACTING_CODES),
                         "without_intel": _first(without[acct], ACTING_CODES),
                         "intel_reason": _first(with_intel[acct], ("intel_flagged", "intel_match"))})
        elif acct in with_intel:
            legit += 1
            if _first(with_intel[acct], ("intel_flagged", "intel_match")) is not None:
                false_matches.append(acct)
    return {"seed": seed, "events_b": len(events), "seconds": time.perf_counter() - t, "a": a, "actors": rows,
            "legitimate_b": legit, "false_matches": false_matches}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--accounts", type=int, default=40, help="B's (and A's) own accounts per seed")
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dg-intel-sharing-"))
    results = []
    for seed in args.seeds:
        r = evaluate(seed, args.accounts, args.days, root)
        results.append(r)
        print(f"seed {seed}: A exported {r['a']['campaigns']} campaign(s), indicators {r['a']['indicators']}; "
              f"B replayed {r['events_b']:,} events twice in {r['seconds']:.0f} s; "
              f"false matches {len(r['false_matches'])} of {r['legitimate_b']} legitimate accounts", flush=True)
    by_variant: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        for row in r["actors"]:
            by_variant[row["variant"]].append(row)

    def cell(values: list) -> str:
        acted = sorted(v for v in values if v is not None)
        med = f"{statistics.median(acted):g}" if acted else "-"
        return f"{len(acted)}/{len(values)} acted, median {med}, max {acted[-1] if acted else '-'}"
    print(f"\n{'kept at B':<11}{'actors':>7}  {'with A intel (queries until B acts)':<40}{'without intel':<40}")
    for variant in VARIANTS:
        rows = by_variant[variant]
        print(f"{variant:<11}{len(rows):>7}  {cell([x['with_intel'] for x in rows]):<40}"
              f"{cell([x['without_intel'] for x in rows]):<40}")
    n_legit = sum(r["legitimate_b"] for r in results)
    n_false = sum(len(r["false_matches"]) for r in results)
    print(f"\nfalse intel matches on B's legitimate accounts: {n_false} of {n_legit}")
    caught = sum(row["caught_at_a"] for r in results for row in r["actors"]) // len(VARIANTS)
    print(f"actors caught at A (and so exported): {caught} of {len(results) * len(STRATEGIES)}")
    if args.json:
        args.json.write_text(json.dumps({"runs": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
