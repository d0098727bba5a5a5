"""A small lab store for the dashboard and report tests: two single-account campaigns (cot,
rubric) and a hydra of 12 accounts over 2 days of organic traffic; ~3,000 events, ~1.5 s."""

from __future__ import annotations

from pathlib import Path

from distillguard.lab.campaigns import CampaignSpec
from distillguard.lab.traffic import TrafficConfig, generate
from distillguard.store import EventStore
from distillguard.store.ingest import ingest_paths

CAMPAIGNS = (
    CampaignSpec("cot", per_day=300, family=0, schedule="office"),
    CampaignSpec("rubric", per_day=300, family=0, schedule="bursts"),
    CampaignSpec("hydra", accounts=12, max_per_account=45, per_day=250, content="sweep", family=2),
)


def build_lab_store(work: Path) -> tuple[Path, list[dict]]:
    """(DuckDB store, labels) of the small lab under ``work``."""
    import orjson

    summary = generate(TrafficConfig(seed=17, accounts=30, days=2, batch_per_day=100, campaigns=CAMPAIGNS),
                       work / "lab")
    db = work / "events.duckdb"
    with EventStore(db) as store:
        ingest_paths(store, [summary.events_path])
    labels = [orjson.loads(line) for line in summary.labels_path.read_bytes().splitlines()]
    return db, labels
