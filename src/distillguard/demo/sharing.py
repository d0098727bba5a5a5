"""Demo step: two providers. A shares what it caught over TAXII; the actor moves to B and B's
gateway acts on its new account from its first requests, naming A's campaign."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

MOVED_REQUESTS = 12          # the actor's first requests at B that the demo sends


def _biggest_single_actor(scan: dict[str, Any], truth: dict[str, dict]) -> str:
    """A's flagged account (outside any cluster) that took the most output tokens."""
    rows = [a for a in scan["accounts"] if a["flagged"] and not a.get("cluster")
            and truth.get(a["account"], {}).get("kind") == "extraction"]
    return max(rows, key=lambda a: int(a.get("completion_tokens", 0)))["account"]


def run_sharing_demo(out: Path, a_db: Path, a_events: Path, scan: dict[str, Any], truth: dict[str, dict],
                     console: Console, *, seed: int) -> dict[str, Any]:
    from distillguard.gateway.replay import load_events
    from distillguard.demo.gateway_step import replay_live
    from distillguard.gateway.server import ServerThread
    from distillguard.intel.export import ExportOptions, export_bundle
    from distillguard.intel.home import IntelHome, Peer, new_secret, secret_sha256
    from distillguard.intel.keys import CommunityKey, public_key_text
    from distillguard.intel.publish import sign_and_publish
    from distillguard.intel.store import IntelStore
    from distillguard.intel.sync import sync_peer
    from distillguard.intel.taxii import API_ROOT, TaxiiServer
    from distillguard.lab.traffic import TrafficConfig, generate
    from distillguard.store import EventStore

    work = out / "providers"
    key = CommunityKey.generate()
    home_a = IntelHome.init(work / "a-intel", "Provider A", key)
    home_b = IntelHome.init(work / "b-intel", "Provider B", key)
    secret = new_secret()
    home_a.add_peer(Peer(name="provider-b", public_key=public_key_text(home_b.signing_key().public),
                         server_secret_sha256=secret_sha256(secret), read=["shared"]))
    home_a.save()
    console.print("A and B each keep an intel home (own Ed25519 signing key; one community HMAC key shared out "
                  "of band); A lets B read its 'shared' TAXII collection")

    # A exports what its scan confirmed: keyed hashes only, signed.
    with EventStore(a_db, read_only=True) as store:
        exported = export_bundle(scan, store.con, home_a, ExportOptions())
    bundle = work / "a-campaigns.stix.json"
    with IntelStore(home_a.db_path) as istore:
        sign_and_publish(exported.bundle, home_a, istore, valid_days=90, out=bundle)
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(exported.indicators.items()))
    raw = bundle.read_text(encoding="utf-8")
    leaked = [a for a in truth if a in raw]
    console.print(f"A exports {len(exported.campaigns)} campaign(s) as signed STIX 2.1 ({len(exported.objects)} "
                  f"objects; indicators: {kinds}) → {bundle.name}; account names in it: {len(leaked)}")

    with ServerThread(TaxiiServer(home_a).app()) as taxii:
        peer = Peer(name="provider-a", public_key=public_key_text(home_a.signing_key().public), trust=1.0,
                    url=f"{taxii.url.rstrip('/')}/{API_ROOT}/", collection="shared", username="provider-b", secret=secret)
        home_b.add_peer(peer)
        home_b.save()
        with IntelStore(home_b.db_path) as istore:
            synced = sync_peer(home_b, peer, istore)
    verified = sum(1 for i in synced.imports)
    indicators = sum(i.indicators for i in synced.imports)
    console.print(f"B pulls A's collection over TAXII 2.1 ({peer.url}): {synced.fetched} objects, "
                  f"{verified} signed set(s) verified against A's public key, {indicators} indicators imported"
                  + (f"; rejected: {synced.rejected}" if synced.rejected else ""))

    # The actor opens a fresh account at B: new key, new e-mail, new addresses, the same card
    # and the same prompt generator. B's own users are a lab of their own.
    actor = _biggest_single_actor(scan, truth)
    a_all = load_events(a_events)
    taken = [e for e in a_all if e["account"] == actor][:MOVED_REQUESTS]
    b_lab = generate(TrafficConfig(seed=seed + 101, accounts=30, days=1, batch_per_day=100, campaigns=()),
                     work / "b-lab")
    b_events = load_events(b_lab.events_path)
    t0, span = b_events[0]["ts_epoch"], b_events[-1]["ts_epoch"] - b_events[0]["ts_epoch"]
    newcomer = "b-newco-" + actor[-6:]
    card = taken[0]["identity"]["payment"]
    for i, ev in enumerate(taken):
        ev.update(account=newcomer, ip=f"203.0.113.{10 + i % 5}", id=f"moved-{i}",
                  identity={"email": "fresh.start.2026@proton.me", "payment": card},
                  ts_epoch=t0 + span * (0.2 + 0.05 * i))
    events = sorted(b_events + taken, key=lambda e: e["ts_epoch"])
    token = "demo-admin-" + secret[:12]
    decisions, view = replay_live(
        work / "b-gateway", events, f'[intel]\nhome = "{home_b.path}"\nreload_s = 0\n', console,
        f"B's gateway serves {len(events):,} requests of its own users and the newcomer…", admin_token=token,
        while_up=lambda url: httpx.get(f"{url}/admin/accounts/{newcomer}",
                                       headers={"authorization": f"Bearer {token}"}).json())
    mine = decisions[newcomer]
    first_act = next((i + 1 for i, (action, _) in enumerate(mine) if action != "allow"), None)
    table = Table(title=f"the actor's new account at B ({newcomer}: new key, e-mail, addresses; A's card)",
                  box=box.SIMPLE_HEAD)
    for col in ("request", "B's action", "reason codes"):
        table.add_column(col)
    for i, (action, codes) in enumerate(mine[:5]):
        table.add_row(f"#{i + 1}", action, codes or "—")
    console.print(table)
    reason = next((r["detail"] for r in view.get("reasons", []) if r.get("signal") == "intel_match"), None)
    if reason:
        console.print(f"B's reason: [italic]{escape(reason)}[/italic]")
    organic = [a for a in decisions if a != newcomer]
    touched = [a for a in organic if any(action != "allow" for action, codes in decisions[a]
                                         if any(c.startswith("intel") for c in codes.split(",")))]
    console.print(f"B acted on the moved actor at its request #{first_act}; B's own users acted on through A's "
                  f"intel: {len(touched)} of {len(organic)}")
    return {"campaigns": len(exported.campaigns), "indicators": indicators, "leaked_names": len(leaked),
            "first_action": first_act, "reason": reason, "organic_b": len(organic), "organic_touched": len(touched)}
