"""Two organisations for the intel tests: lab A (a hydra campaign it flags) and lab B (its own
traffic, where the same actor runs two fresh accounts too small to flag alone).

B's actor reuses what an operator carries from one provider to the next: one of the payment
cards seen at A on one account; A's IP /24 and prompt templates (the same generator wording)
on the other.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import orjson

from distillguard.detect.scan import ScanOptions, scan_store
from distillguard.intel.home import IntelHome, Peer, secret_sha256
from distillguard.intel.keys import CommunityKey, SigningKey, public_key_text
from distillguard.lab.campaigns import CampaignSpec
from distillguard.lab.traffic import TrafficConfig, generate
from distillguard.store import EventStore
from distillguard.store.ingest import ingest_paths

HYDRA_A = CampaignSpec("hydra", accounts=12, max_per_account=45, per_day=300, content="sweep", family=2)
HYDRA_B = CampaignSpec("hydra", name="hydra-b", accounts=2, max_per_account=14, per_day=60, content="sweep",
                       family=2)
SECRET_B_ON_A = "secret-of-lab-b-on-a-0123456789"
SECRET_T_ON_A = "secret-of-taxii-client-on-a-01"


@dataclass
class Lab:
    events: Path          # JSON Lines (gz) as generated
    db: Path              # DuckDB store
    labels: list[dict]
    scan: dict            # scan JSON (no intel)

    @property
    def hydra(self) -> list[str]:
        return sorted(r["account"] for r in self.labels if r["strategy"] == "hydra")


def read_events(path: Path) -> list[dict]:
    with gzip.open(path, "rb") as fh:
        return [orjson.loads(line) for line in fh]


def raw_needles(lab: "Lab") -> set[str]:
    """Every identifier and prompt text of a lab's input, lowercased: none may appear in an export."""
    needles: set[str] = set()
    for e in read_events(lab.events):
        needles.add(e["account"])
        needles.add(e["ip"])
        needles.add(e["ip"].rsplit(".", 1)[0] + ".")        # the /24 as text
        for value in (e.get("identity") or {}).values():
            if isinstance(value, str) and len(value) >= 6 and not value[:4].isdigit():
                needles.add(value)
        if "@" in e["identity"].get("email", ""):
            needles.add(e["identity"]["email"].split("@")[1])  # the e-mail domain
            needles.add(e["identity"]["email"].split("@")[0])  # the local part
        prompt = e["request"]["messages"][-1]["content"]
        needles.add(prompt[:60])
        needles.update(line for line in prompt.splitlines() if len(line) >= 24)
    return {n.lower() for n in needles if n and len(n) >= 6}


def write_events(path: Path, events: list[dict]) -> None:
    path.write_bytes(gzip.compress(b"".join(orjson.dumps(e) + b"\n" for e in events)))


def _ingest_and_scan(events: Path, db: Path, labels: list[dict]) -> Lab:
    with EventStore(db) as store:
        ingest_paths(store, [events])
        scan = scan_store(store, ScanOptions()).to_dict()
    return Lab(events=events, db=db, labels=labels, scan=scan)


def make_lab_a(work: Path) -> Lab:
    summary = generate(TrafficConfig(seed=5, accounts=40, days=2, batch_per_day=200, campaigns=(HYDRA_A,)),
                       work / "lab-a")
    labels = [orjson.loads(x) for x in summary.labels_path.read_bytes().splitlines()]
    return _ingest_and_scan(summary.events_path, work / "a.duckdb", labels)


def make_lab_b(work: Path, lab_a: Lab) -> Lab:
    """B's own organic traffic, plus the actor's two accounts carrying A's card, /24 and templates."""
    summary = generate(TrafficConfig(seed=23, accounts=40, days=2, batch_per_day=200, campaigns=(HYDRA_B,)),
                       work / "lab-b-raw")
    labels = [orjson.loads(x) for x in summary.labels_path.read_bytes().splitlines()]
    actor = sorted(r["account"] for r in labels if r["strategy"] == "hydra")
    a_events = [e for e in read_events(lab_a.events) if e["account"] in set(lab_a.hydra)]
    card = a_events[0]["identity"]["payment"]
    prefix = a_events[0]["ip"].rsplit(".", 1)[0]
    events = read_events(summary.events_path)
    for e in events:
        if e["account"] == actor[0]:      # carries a card seen at A
            e["identity"] = e["identity"] | {"payment": card, "email": f"{e['account']}@freshmail.example"}
        elif e["account"] == actor[1]:    # A's /24, A's templates, nothing else shared
            e["identity"] = e["identity"] | {"payment": "card_b_own_0001", "email": "zz.top@freshmail.example"}
            e["ip"] = f"{prefix}.{200 + len(e['id']) % 50}"
    path = work / "lab-b" / "events.jsonl.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_events(path, events)
    return _ingest_and_scan(path, work / "b.duckdb", labels)


def make_homes(work: Path) -> tuple[IntelHome, IntelHome]:
    """Lab A and lab B, one community key, each registered as the other's peer; B may read A's
    'shared' collection over TAXII (HTTP Basic), a taxii2-client user may read shared and write inbox."""
    key = CommunityKey.generate()
    home_a = IntelHome.init(work / "home-a", "Lab A", key)
    home_b = IntelHome.init(work / "home-b", "Lab B", key)
    pub_a, pub_b = (public_key_text(h.signing_key().public) for h in (home_a, home_b))
    home_a.add_peer(Peer(name="lab-b", public_key=pub_b, server_secret_sha256=secret_sha256(SECRET_B_ON_A),
                         read=["shared"]))
    home_a.add_peer(Peer(name="taxii-client", public_key=public_key_text(SigningKey.generate().public), trust=0.0,
                         server_secret_sha256=secret_sha256(SECRET_T_ON_A), read=["shared", "inbox"],
                         write=["inbox"]))
    home_a.save()
    home_b.add_peer(Peer(name="lab-a", public_key=pub_a, trust=1.0))
    home_b.save()
    return home_a, home_b
