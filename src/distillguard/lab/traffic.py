"""`lab traffic`: write a time-ordered event log of organic and extraction traffic, and its labels.

Ground truth goes to ``labels.jsonl`` beside the events, never inside them, so detectors can't peek.
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson

from distillguard.errors import UsageError
from distillguard.events.jsonl import JsonlWriter
from distillguard.events.schema import format_ts
from distillguard.lab.base import LabContext
from distillguard.lab.campaigns import CampaignSpec, OrganicReseller, build_campaign, default_campaigns
from distillguard.lab.corpus import Conversation, load_corpus
from distillguard.lab.evasive import ATTACK_FAMILIES, build_attack
from distillguard.lab.legit import LEGIT_FAMILIES
from distillguard.lab.organic import BatchApp, EvalRun, OrganicUser, Researcher
from distillguard.lab.text import ResponsePool

PUBLIC_SHARE_PERCENT = 30  # conversations an attacker finds elsewhere; the rest are our users'


@dataclass(frozen=True)
class TrafficConfig:
    seed: int = 1
    accounts: int = 150            # organic pseudo-users (casual), before hard negatives
    days: int = 7
    start: str = "2026-10-05"      # UTC date of day 0
    power_users: int | None = None  # default: 2% of accounts, at least 1
    batch_apps: int = 2
    batch_per_day: int = 1500
    eval_runs: int = 1
    researchers: int = 1
    resellers: int = 0             # organic resellers (hard negatives): aggregators of organic customers
    reseller_per_day: int = 1000   # each one's queries per day (even-numbered ones name their customers)
    campaigns: tuple[CampaignSpec, ...] = field(default_factory=lambda: tuple(default_campaigns()))
    families: tuple[str, ...] = ()          # evasive attack families (lab/evasive.py) to run
    family_instances: int = 1              # of each: accounts (a swarm or a library group counts once)
    legit_families: tuple[str, ...] = ()    # hard legitimate families (lab/legit.py) to run
    legit_accounts: int = 1                # accounts of each legitimate family

    def check(self) -> None:
        unknown = [f for f in self.families if f not in ATTACK_FAMILIES]
        if unknown:
            raise UsageError(f"unknown attack family '{unknown[0]}' (choose from {', '.join(ATTACK_FAMILIES)})")
        unknown = [f for f in self.legit_families if f not in LEGIT_FAMILIES]
        if unknown:
            raise UsageError(f"unknown legitimate family '{unknown[0]}' (choose from {', '.join(LEGIT_FAMILIES)})")
        if self.family_instances < 0 or self.legit_accounts < 0:
            raise UsageError("family instances and legitimate accounts must be >= 0")
        if self.resellers < 0 or self.reseller_per_day <= 0:
            raise UsageError("resellers must be >= 0 and reseller_per_day > 0")
        if self.accounts < 0 or self.days <= 0:
            raise UsageError("--accounts must be >= 0 and --days > 0")
        if self.days > 366:
            raise UsageError("--days is limited to 366")
        try:
            datetime.strptime(self.start, "%Y-%m-%d")
        except ValueError:
            raise UsageError(f"--start must be a date like 2026-10-05, got '{self.start}'") from None


@dataclass
class TrafficSummary:
    events: int
    accounts: int
    by_kind: dict[str, int]
    events_path: Path
    labels_path: Path


def split_corpus(conversations: list[Conversation]) -> tuple[list[Conversation], list[Conversation]]:
    """Deterministic split into our users' conversations and public ones (by id hash)."""
    organic, public = [], []
    for conv in conversations:
        bucket = int.from_bytes(hashlib.blake2b(conv.id.encode(), digest_size=2).digest(), "little") % 100
        (public if bucket < PUBLIC_SHARE_PERCENT else organic).append(conv)
    return organic, public


def build_context(config: TrafficConfig) -> LabContext:
    organic, public = split_corpus(load_corpus())
    start = datetime.strptime(config.start, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()
    return LabContext(seed=config.seed, start=start, days=config.days, organic=organic, public=public,
                      responses=ResponsePool(public + organic))


def build_actors(config: TrafficConfig, ctx: LabContext) -> list[Any]:
    actors: list[Any] = [OrganicUser(ctx, i, "casual") for i in range(config.accounts)]
    n_power = config.power_users if config.power_users is not None else max(1, config.accounts // 50)
    actors += [OrganicUser(ctx, i, "power") for i in range(n_power)]
    actors += [BatchApp(ctx, i, per_day=config.batch_per_day) for i in range(config.batch_apps)]
    actors += [EvalRun(ctx, i) for i in range(config.eval_runs)]
    actors += [Researcher(ctx, i) for i in range(config.researchers)]
    actors += [OrganicReseller(ctx, i, per_day=config.reseller_per_day, end_user_ids=i % 2 == 0)
               for i in range(config.resellers)]
    names = set()
    for i, spec in enumerate(config.campaigns):
        spec = spec.resolved(i)
        if spec.name in names:
            raise UsageError(f"two campaigns are named '{spec.name}'")
        names.add(spec.name)
        actors.append(build_campaign(ctx, spec))
    for family in dict.fromkeys(config.families):
        for i in range(config.family_instances):
            actors += build_attack(ctx, family, i)
    for family in dict.fromkeys(config.legit_families):
        actors += [LEGIT_FAMILIES[family](ctx, i) for i in range(config.legit_accounts)]
    return actors


def with_family(row: dict[str, Any]) -> dict[str, Any]:
    """A label row with ``family`` and ``expected_status`` (the older actors name only a strategy)."""
    if "family" not in row:
        status = "flagged" if row.get("kind") == "extraction" else (
            "evaluation" if row.get("strategy") == "eval_run" else "clear")
        row = {**row, "family": row.get("strategy"), "expected_status": status}
    return row


def merged_events(actors: list[Any]) -> Iterator[dict[str, Any]]:
    """All actors' events in one time-ordered stream (each actor yields in order)."""
    return heapq.merge(*(actor.events() for actor in actors), key=lambda ev: ev["ts"])


def generate(config: TrafficConfig, out_dir: str | Path, *,
             progress: Callable[[int], None] | None = None) -> TrafficSummary:
    """Write ``events.jsonl.gz``, ``labels.jsonl`` and ``manifest.json`` under ``out_dir``."""
    config.check()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = build_context(config)
    actors = build_actors(config, ctx)
    labels = [with_family(row) for actor in actors for row in actor.labels()]
    events_path = out / "events.jsonl.gz"
    labels_path = out / "labels.jsonl"
    tmp_path = out / "events.jsonl.gz.partial"
    n = 0
    with JsonlWriter(tmp_path, compress=True, compresslevel=1) as writer:
        for ev in merged_events(actors):
            ev["ts"] = format_ts(ev["ts"])
            writer.write(ev)
            n += 1
            if progress is not None and n % 5000 == 0:
                progress(n)
    tmp_path.replace(events_path)  # a crash never leaves a half-written log under the final name
    with open(labels_path, "wb") as fh:
        for row in labels:
            fh.write(orjson.dumps(row) + b"\n")
    by_kind: dict[str, int] = {}
    for row in labels:
        by_kind[row["family"]] = by_kind.get(row["family"], 0) + 1
    config_record = asdict(config) | {"campaigns": [asdict(a.spec) for a in actors if hasattr(a, "spec")]}
    manifest = {"config": config_record, "events": n, "accounts": len(labels), "accounts_by_strategy": by_kind,
                "start": format_ts(ctx.start), "end": format_ts(ctx.end)}
    (out / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    if progress is not None:
        progress(n)
    return TrafficSummary(events=n, accounts=len(labels), by_kind=by_kind, events_path=events_path,
                          labels_path=labels_path)
