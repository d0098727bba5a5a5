"""Building baselines: from a store of organic traffic, or from the lab's organic traffic, plus
(optionally) the accounts analysts marked false positive, so what they do counts as normal."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pandas as pd

from distillguard.detect.baseline import Baseline
from distillguard.detect.engine import local_features
from distillguard.detect.features import DEFAULT_MAX_TOKENS_CAP
from distillguard.store import EventStore
from distillguard.store.ingest import ingest_paths


def build_from_store(store: EventStore, *, source: str, max_tokens_cap: int = DEFAULT_MAX_TOKENS_CAP,
                     min_queries: int = 20, exclude: Iterable[str] = (), extra: pd.DataFrame | None = None,
                     progress: Callable[[int, int], None] | None = None) -> Baseline:
    """Fit on every account of ``store`` but ``exclude``d ones, plus the feature rows of ``extra``
    (analysts' false positives: they are fitted on even where labels or the store say otherwise)."""
    # Accounts only: the baseline describes organic accounts (end users are judged against it too).
    features, _ = local_features(store, max_tokens_cap=max_tokens_cap, end_users=False, progress=progress)
    excluded = set(exclude)
    if excluded:
        features = features[~features.index.isin(excluded)]
    if extra is not None and not extra.empty:
        features = pd.concat([features[~features.index.isin(extra.index)], extra]).sort_index()
    return Baseline(max_tokens_cap=max_tokens_cap, min_queries=min_queries, source=source).fit(features)


def build_from_paths(paths: Sequence[str | Path], *, source: str, **kwargs) -> Baseline:
    with tempfile.TemporaryDirectory(prefix="distillguard-baseline-") as tmp:
        from distillguard.detect.scan import open_sources

        with open_sources(paths, Path(tmp)) as store:
            return build_from_store(store, source=source, **kwargs)


def build_from_lab(*, seed: int = 1000, accounts: int = 3000, days: int = 14, **kwargs) -> Baseline:
    """Fit on the lab's organic traffic (pseudo-users and hard negatives, no campaign)."""
    from distillguard.lab.traffic import TrafficConfig, generate

    with tempfile.TemporaryDirectory(prefix="distillguard-baseline-") as tmp:
        summary = generate(TrafficConfig(seed=seed, accounts=accounts, days=days, campaigns=()), Path(tmp) / "lab")
        with EventStore(Path(tmp) / "lab.duckdb") as store:
            ingest_paths(store, [summary.events_path])
            source = f"lab organic traffic (seed {seed}, {accounts} accounts, {days} days)"
            return build_from_store(store, source=source, **kwargs)


def account_features_from(db: str | Path, accounts: Iterable[str], *,
                          max_tokens_cap: int = DEFAULT_MAX_TOKENS_CAP) -> pd.DataFrame:
    """Feature rows of some accounts of a DuckDB store (read-only), computed exactly as for the
    organic traffic: their events are copied to a scratch store and go through the same
    ``local_features``. Accounts without events are absent from the frame."""
    wanted = sorted(set(accounts))
    with EventStore(db, read_only=True) as source, EventStore(":memory:") as scratch:
        if wanted:
            present = set(source.columns())
            cols = scratch.columns()
            select = ", ".join(c if c in present else f"NULL AS {c}" for c in cols)
            table = source.con.sql(f"SELECT {select} FROM events WHERE account IN (SELECT unnest(?))",
                                   params=[wanted]).to_arrow_table()
            scratch.con.register("_picked", table)
            scratch.run(f"INSERT INTO events ({', '.join(cols)}) SELECT {', '.join(cols)} FROM _picked")
            scratch.con.unregister("_picked")
        features, _ = local_features(scratch, max_tokens_cap=max_tokens_cap, end_users=False)
    return features
